//! The engine's side of shared references: what the application shares, what it sends
//! and when, and what other sessions share.
//!
//! This client's references live in the local view's terms. One is sent at the confirmed
//! version — moved back through the local changes not yet committed, which is exact unless
//! those changes touched its element — and sent again, exact, once every local change is
//! committed; one whose element is not committed yet waits for that too. Other sessions'
//! references are kept at the confirmed version, as the server keeps them, and shown moved
//! through the uncommitted local changes. After a reconnection, the answer to a model's
//! resync lists the others' references, and this client shares its own again.

use std::collections::BTreeMap;

use concord_ot::ReferenceValue;
use concord_protocol::{
    ClientMessage, ClientNotice, Collaborator, ErrorReply, ModelId, ReferenceChange, ReferenceKey,
    ServerResponse, SessionId, SharedReference,
};

use super::{ClientEngine, EngineError, Link};
use crate::events::ModelEvent;
use crate::reference;
use crate::replica::StoreChange;
use crate::shared::server_form;

impl ClientEngine {
    /// The session of the current (or last) connection: how other clients name this one's
    /// references.
    pub fn session_id(&self) -> Option<&SessionId> {
        self.session.as_ref()
    }

    /// Shares the reference `key` on a loaded model (if it is not shared yet) and sets its
    /// value, in the terms of the model's local view; `None` clears it (shared without a
    /// value). The value is checked against the local view: an invalid one is refused and
    /// changes nothing. Offline, it is kept and shared once the model is live again.
    pub fn set_reference(
        &mut self,
        model: &ModelId,
        key: ReferenceKey,
        value: Option<ReferenceValue>,
    ) -> Result<(), EngineError> {
        let entry =
            self.models.get_mut(model).ok_or_else(|| EngineError::NotLoaded(model.clone()))?;
        match &value {
            Some(value) => reference::check(entry.replica.local(), &key, value)?,
            None => {
                if let Some(element) = key.element
                    && !entry.replica.local().contains(element)
                {
                    return Err(reference::ReferenceError::UnknownElement(element).into());
                }
            }
        }
        entry.references.set_own(key.clone(), value);
        self.publish(model, &key);
        Ok(())
    }

    /// Shares the reference `key` without a value, unless it is shared already (then its
    /// value stays).
    pub fn share_reference(
        &mut self,
        model: &ModelId,
        key: ReferenceKey,
    ) -> Result<(), EngineError> {
        let entry =
            self.models.get_mut(model).ok_or_else(|| EngineError::NotLoaded(model.clone()))?;
        match entry.references.own(&key) {
            Some(value) => {
                let value = value.clone();
                self.set_reference(model, key, value)
            }
            None => self.set_reference(model, key, None),
        }
    }

    /// Stops sharing the reference `key`; false if it was not shared.
    pub fn unshare_reference(&mut self, model: &ModelId, key: &ReferenceKey) -> bool {
        let Some(entry) = self.models.get_mut(model) else { return false };
        let Some(at_server) = entry.references.unshare_own(key) else { return false };
        if at_server {
            self.ended(model, vec![(key.clone(), true)]);
        }
        true
    }

    /// Tells the server to forget references that ended here (`true`: it knew them).
    pub(super) fn ended(&mut self, model: &ModelId, ended: Vec<(ReferenceKey, bool)>) {
        let sharing = self.is_connected() && self.models.get(model).is_some_and(|e| e.sharing);
        for (key, at_server) in ended {
            if sharing && at_server {
                self.send_reference(model, ReferenceChange::Unshare { reference: key });
            }
        }
    }

    /// A reference as it applies to the model's local view: this client's own when
    /// `session` is this client's, otherwise another session's. `None` when not shared;
    /// `Some(None)` when shared without a value.
    pub fn reference(
        &self,
        model: &ModelId,
        session: &SessionId,
        key: &ReferenceKey,
    ) -> Option<Option<ReferenceValue>> {
        let entry = self.models.get(model)?;
        if self.session.as_ref() == Some(session)
            && let Some(own) = entry.references.own(key)
        {
            return Some(own.clone());
        }
        entry.references.remote(session, key, &entry.replica)
    }

    /// This client's references on a model.
    pub fn own_references(&self, model: &ModelId) -> Vec<(ReferenceKey, Option<ReferenceValue>)> {
        self.models.get(model).map_or_else(Vec::new, |entry| {
            entry.references.own_all().map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    /// Every other session's reference on a model, as it applies to the local view.
    pub fn remote_references(&self, model: &ModelId) -> Vec<SharedReference> {
        self.models
            .get(model)
            .map_or_else(Vec::new, |entry| entry.references.remote_all(&entry.replica))
    }

    /// The other sessions that have a model open (each with its user), as far as this
    /// client knows: listed when the model's resync completes, then told as they open and
    /// close it. Empty while offline.
    pub fn collaborators(&self, model: &ModelId) -> Vec<Collaborator> {
        self.models
            .get(model)
            .map_or_else(Vec::new, |entry| entry.collaborators.values().cloned().collect())
    }

    /// Whether the server takes this client's references on the model now.
    pub fn shares_references(&self, model: &ModelId) -> bool {
        self.models.get(model).is_some_and(|entry| entry.sharing)
    }

    /// Sends the current value of this client's reference `key` (with a `Share` first if
    /// the server does not know it yet), if the server takes references on the model now.
    /// One whose element the server does not have yet waits until every local change is
    /// committed.
    pub(super) fn publish(&mut self, model: &ModelId, key: &ReferenceKey) {
        let connected = self.is_connected();
        let Some(entry) = self.models.get_mut(model) else { return };
        if !(connected && entry.sharing) {
            return;
        }
        let Some(value) = entry.references.own(key).cloned() else { return };
        let share = !entry.references.at_server(key);
        if share
            && let Some(element) = key.element
            && !entry.replica.confirmed().data.contains(element)
        {
            return entry.references.mark_dirty(key, true);
        }
        let mut changes = Vec::new();
        if share {
            entry.references.set_at_server(key, true);
            changes.push(ReferenceChange::Share { reference: key.clone(), value: None });
        }
        match value {
            None if share => {}
            None => changes.push(ReferenceChange::Clear { reference: key.clone() }),
            Some(value) => match server_form(key, value, &entry.replica) {
                Some((value, exact)) => {
                    entry.references.mark_dirty(key, !exact);
                    let version = entry.replica.confirmed_version();
                    changes.push(ReferenceChange::Set { reference: key.clone(), value, version });
                }
                None => entry.references.mark_dirty(key, true),
            },
        }
        for change in changes {
            self.send_reference(model, change);
        }
    }

    fn send_reference(&mut self, model: &ModelId, change: ReferenceChange) {
        let notice = ClientNotice::Reference { model: model.clone(), change };
        self.transmit.push_back(ClientMessage::Notice(notice));
    }

    /// Once every local change is committed, sends again what may differ at the server.
    pub(super) fn publish_dirty(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get_mut(model) else { return };
        if !entry.sharing || entry.replica.has_unacknowledged() {
            return;
        }
        for key in entry.references.take_dirty() {
            self.publish(model, &key);
        }
    }

    /// The confirmed state took the committed operations among `changes`.
    pub(super) fn confirmed_moved(&mut self, model: &ModelId, changes: &[StoreChange]) {
        let Some(entry) = self.models.get_mut(model) else { return };
        for change in changes {
            if let StoreChange::AppendServerOperation(committed) = change {
                let confirmed = &entry.replica.confirmed().data;
                entry.references.confirmed_moved(&committed.operation, confirmed);
            }
        }
    }

    /// The server no longer takes this client's references on the model and its others'
    /// are gone with the connection (or the model).
    pub(super) fn stop_sharing(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get_mut(model) else { return };
        entry.sharing = false;
        entry.references.forget_at_server();
        let events = entry.references.clear_remote();
        let gone: Vec<Collaborator> =
            std::mem::take(&mut entry.collaborators).into_values().collect();
        for event in events {
            self.model_event(model, event);
        }
        for Collaborator { session, user, .. } in gone {
            self.model_event(model, ModelEvent::CollaboratorClosed { session, user });
        }
    }

    /// The answer to `ResyncComplete`: the model is open here and others' references are
    /// listed; this client shares its own again.
    pub(super) fn resync_complete_answered(
        &mut self,
        model: ModelId,
        answer: Result<ServerResponse, ErrorReply>,
    ) {
        let Ok(ServerResponse::ResyncCompleted { model: answered, collaborators, references }) =
            answer
        else {
            return;
        };
        let Some(entry) = self.models.get_mut(&model) else { return };
        if answered != model || entry.link != Link::Live {
            return;
        }
        entry.sharing = true;
        for c in &collaborators {
            self.authors.remember(&c.session, &c.user);
        }
        let Some(entry) = self.models.get_mut(&model) else { return };
        let listed: BTreeMap<SessionId, Collaborator> =
            collaborators.into_iter().map(|c| (c.session.clone(), c)).collect();
        let old = std::mem::replace(&mut entry.collaborators, listed);
        let mut told: Vec<ModelEvent> = old
            .values()
            .filter(|c| !entry.collaborators.contains_key(&c.session))
            .map(|c| ModelEvent::CollaboratorClosed {
                session: c.session.clone(),
                user: c.user.clone(),
            })
            .collect();
        told.extend(
            entry
                .collaborators
                .values()
                .filter(|c| !old.contains_key(&c.session))
                .map(|c| ModelEvent::CollaboratorOpened(c.clone())),
        );
        entry.references.forget_at_server();
        let events = entry.references.replace_remote(references, &entry.replica);
        let keys = entry.references.own_keys();
        for event in told.into_iter().chain(events) {
            self.model_event(&model, event);
        }
        for key in keys {
            self.publish(&model, &key);
        }
    }

    /// Another session's reference change.
    pub(super) fn remote_reference(
        &mut self,
        model: &ModelId,
        session: SessionId,
        change: ReferenceChange,
    ) {
        let Some(entry) = self.models.get_mut(model) else { return };
        // Before the resync's answer, which lists the references as they are then.
        if !entry.sharing {
            return;
        }
        let events: Vec<ModelEvent> =
            entry.references.remote_change(session, change, &entry.replica);
        for event in events {
            self.model_event(model, event);
        }
    }
}
