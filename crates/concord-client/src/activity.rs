//! Activities from the client: join a named activity of a type ("viewing" page 12), see who
//! else is in it and with what state, and keep this session's own state there. Nothing of
//! it is stored: an activity joined is joined again, with this session's state, after every
//! reconnection; state set while offline is sent with that join.

use std::collections::BTreeMap;

use concord_protocol::{
    ActivityChange, ActivityId, Participant, PresenceState, ServerResponse, SessionId,
};

use crate::domain::Domain;
use crate::driver::{ActivityOp, Command};
use crate::error::ClientError;
use crate::events::Events;
use crate::permissions::unexpected;

/// The activity side of a [`Domain`].
#[derive(Debug, Clone)]
pub struct ActivityService {
    pub(crate) domain: Domain,
}

impl ActivityService {
    /// Joins the activity `id` of type `kind` (created if nobody is in it) with a first
    /// state; the server checks the type's `join` permission, and `set_state` when `state`
    /// is not empty (without it the join is refused and nothing joined). Needs the connection:
    /// offline it fails at once with [`ClientError::Offline`].
    pub async fn join(
        &self,
        kind: &str,
        id: &str,
        state: BTreeMap<String, serde_json::Value>,
    ) -> Result<Activity, ClientError> {
        let activity = ActivityId { kind: kind.to_owned(), id: id.to_owned() };
        let op = ActivityOp::Join(activity.clone(), json_text(state));
        match request(&self.domain, op).await? {
            ServerResponse::ActivityJoined { participants, .. } => {
                Ok(Activity { domain: self.domain.clone(), id: activity, joined: participants })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// What happens in the activities this domain joined, from now on. State values are
    /// JSON text.
    pub fn events(&self) -> Events<(ActivityId, ActivityChange)> {
        self.domain.activity_events()
    }
}

/// A joined activity.
#[derive(Debug, Clone)]
pub struct Activity {
    domain: Domain,
    id: ActivityId,
    joined: Vec<Participant>,
}

impl Activity {
    pub fn id(&self) -> &ActivityId {
        &self.id
    }

    /// Everyone in it when it was joined, this session included.
    pub fn joined_with(&self) -> &[Participant] {
        &self.joined
    }

    /// Everyone in it as last heard.
    pub async fn participants(&self) -> Result<Vec<Participant>, ClientError> {
        let activity = self.id.clone();
        self.domain.call(|reply| Command::Participants { activity, reply }).await
    }

    /// Sets one key of this session's state here (needs the type's `set_state`).
    /// Connected, it returns once the server took it; offline, at once.
    pub async fn set_state(&self, key: &str, value: serde_json::Value) -> Result<(), ClientError> {
        let state = json_text(BTreeMap::from([(key.to_owned(), value)]));
        self.done(ActivityOp::SetState(self.id.clone(), state)).await
    }

    /// Removes keys of this session's state here (needs the type's `set_state`).
    pub async fn remove_state(&self, keys: &[&str]) -> Result<(), ClientError> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.done(ActivityOp::RemoveState(self.id.clone(), Some(keys))).await
    }

    /// Removes all of this session's state here (needs the type's `set_state`).
    pub async fn clear_state(&self) -> Result<(), ClientError> {
        self.done(ActivityOp::RemoveState(self.id.clone(), None)).await
    }

    /// Removes another session from the activity (needs the type's `manage`).
    pub async fn remove(&self, session: &SessionId) -> Result<(), ClientError> {
        self.done(ActivityOp::Remove(self.id.clone(), session.clone())).await
    }

    /// Leaves the activity (and stops joining it again on reconnection).
    pub async fn leave(self) -> Result<(), ClientError> {
        self.done(ActivityOp::Leave(self.id.clone())).await
    }

    async fn done(&self, op: ActivityOp) -> Result<(), ClientError> {
        match request(&self.domain, op).await? {
            ServerResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

async fn request(domain: &Domain, op: ActivityOp) -> Result<ServerResponse, ClientError> {
    domain.call(|reply| Command::Activity { op, reply }).await
}

fn json_text(state: BTreeMap<String, serde_json::Value>) -> PresenceState {
    state.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}
