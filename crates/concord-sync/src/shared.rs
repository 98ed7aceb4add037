//! The shared references of one model on a client: its own, kept in the local view's terms
//! and moved through every change to it, and other sessions', kept at the confirmed version
//! (as the server keeps them) and shown moved through the local changes not yet committed.

use std::collections::BTreeMap;

use concord_ot::{Document, Operation, ReferenceValue};
use concord_protocol::{ReferenceChange, ReferenceKey, SessionId, SharedReference};

use crate::events::{ModelEvent, RemoteReferenceChange};
use crate::reference;
use crate::replica::ModelReplica;

/// One of this client's references.
#[derive(Debug, Clone, PartialEq)]
struct Own {
    value: Option<ReferenceValue>,
    /// What the server holds may differ from it once every local change is committed (it
    /// was sent while local changes moved it, or could not be sent yet): it is sent again
    /// then.
    dirty: bool,
    /// The server was told it is shared, on this connection.
    at_server: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ModelReferences {
    own: BTreeMap<ReferenceKey, Own>,
    remote: BTreeMap<(SessionId, ReferenceKey), Option<ReferenceValue>>,
}

impl ModelReferences {
    /// Shares `key` (if it is not yet) with `value`.
    pub(crate) fn set_own(&mut self, key: ReferenceKey, value: Option<ReferenceValue>) {
        let own =
            self.own.entry(key).or_insert(Own { value: None, dirty: false, at_server: false });
        own.value = value;
    }

    /// Stops sharing `key`: `None` if it was not shared, else whether the server knew it.
    pub(crate) fn unshare_own(&mut self, key: &ReferenceKey) -> Option<bool> {
        self.own.remove(key).map(|own| own.at_server)
    }

    pub(crate) fn at_server(&self, key: &ReferenceKey) -> bool {
        self.own.get(key).is_some_and(|own| own.at_server)
    }

    pub(crate) fn set_at_server(&mut self, key: &ReferenceKey, at_server: bool) {
        if let Some(own) = self.own.get_mut(key) {
            own.at_server = at_server;
        }
    }

    /// The server forgot every reference of this client (a new connection, a new resync).
    pub(crate) fn forget_at_server(&mut self) {
        for own in self.own.values_mut() {
            own.at_server = false;
        }
    }

    pub(crate) fn own(&self, key: &ReferenceKey) -> Option<&Option<ReferenceValue>> {
        self.own.get(key).map(|own| &own.value)
    }

    pub(crate) fn own_all(&self) -> impl Iterator<Item = (&ReferenceKey, &Option<ReferenceValue>)> {
        self.own.iter().map(|(key, own)| (key, &own.value))
    }

    pub(crate) fn own_keys(&self) -> Vec<ReferenceKey> {
        self.own.keys().cloned().collect()
    }

    pub(crate) fn mark_dirty(&mut self, key: &ReferenceKey, dirty: bool) {
        if let Some(own) = self.own.get_mut(key) {
            own.dirty = dirty;
        }
    }

    /// The references to send again now that nothing local is uncommitted.
    pub(crate) fn take_dirty(&mut self) -> Vec<ReferenceKey> {
        let dirty: Vec<ReferenceKey> =
            self.own.iter().filter(|(_, own)| own.dirty).map(|(key, _)| key.clone()).collect();
        for key in &dirty {
            self.mark_dirty(key, false);
        }
        dirty
    }

    /// A local change applied to the local view (`local`, after it). Returns the
    /// references it ended, as [`ModelReferences::local_view_moved`].
    pub(crate) fn local_change(
        &mut self,
        operation: &Operation,
        local: &Document,
    ) -> Vec<(ReferenceKey, bool)> {
        for (key, own) in &mut self.own {
            if reference::touches(key, operation) {
                own.dirty = true;
            }
        }
        self.local_view_moved(operation, local)
    }

    /// An operation was applied to the local view (a server operation transformed past the
    /// local changes, or a local change); `local` is the view after it. A reference whose
    /// element it removed is no longer shared: returns those, with whether the server
    /// knew them (it is told to forget them).
    pub(crate) fn local_view_moved(
        &mut self,
        operation: &Operation,
        local: &Document,
    ) -> Vec<(ReferenceKey, bool)> {
        for (key, own) in &mut self.own {
            if let Some(value) = own.value.take() {
                own.value = reference::transform(key, value, operation, local);
            }
        }
        self.drop_orphans(local)
    }

    fn drop_orphans(&mut self, local: &Document) -> Vec<(ReferenceKey, bool)> {
        let orphans: Vec<ReferenceKey> = self
            .own
            .keys()
            .filter(|key| key.element.is_some_and(|element| !local.contains(element)))
            .cloned()
            .collect();
        orphans
            .into_iter()
            .filter_map(|key| self.own.remove(&key).map(|own| (key, own.at_server)))
            .collect()
    }

    /// The confirmed state moved through a committed operation (`confirmed`, after it).
    pub(crate) fn confirmed_moved(&mut self, operation: &Operation, confirmed: &Document) {
        for ((_, key), value) in &mut self.remote {
            if let Some(old) = value.take() {
                *value = reference::transform(key, old, operation, confirmed);
            }
        }
    }

    /// Local changes were undone: own references that no longer fit are cleared (or end
    /// with their element, returned as by [`ModelReferences::local_view_moved`]), and all
    /// are sent again once everything is committed.
    pub(crate) fn local_undone(&mut self, local: &Document) -> Vec<(ReferenceKey, bool)> {
        let ended = self.drop_orphans(local);
        for (key, own) in &mut self.own {
            own.dirty = true;
            if own.value.as_ref().is_some_and(|v| reference::check(local, key, v).is_err()) {
                own.value = None;
            }
        }
        ended
    }

    /// Other sessions' references as the server listed them, at the confirmed version;
    /// returns the events that tell the difference.
    pub(crate) fn replace_remote(
        &mut self,
        listed: Vec<SharedReference>,
        replica: &ModelReplica,
    ) -> Vec<ModelEvent> {
        let old = std::mem::take(&mut self.remote);
        for shared in listed {
            self.remote.insert((shared.session, shared.reference), shared.value);
        }
        let mut events = Vec::new();
        for (session, reference) in old.keys() {
            if !self.remote.contains_key(&(session.clone(), reference.clone())) {
                let change = RemoteReferenceChange::Unshared;
                let (session, reference) = (session.clone(), reference.clone());
                events.push(ModelEvent::RemoteReference { session, user: None, reference, change });
            }
        }
        for ((session, reference), value) in &self.remote {
            if old.get(&(session.clone(), reference.clone())) == Some(value) {
                continue;
            }
            if !old.contains_key(&(session.clone(), reference.clone())) {
                let change = RemoteReferenceChange::Shared;
                let (session, reference) = (session.clone(), reference.clone());
                events.push(ModelEvent::RemoteReference { session, user: None, reference, change });
            }
            let change = match value {
                Some(value) => match shown(reference, value.clone(), replica) {
                    Some(value) => RemoteReferenceChange::Set(value),
                    None => RemoteReferenceChange::Cleared,
                },
                None => RemoteReferenceChange::Cleared,
            };
            let (session, reference) = (session.clone(), reference.clone());
            events.push(ModelEvent::RemoteReference { session, user: None, reference, change });
        }
        events
    }

    /// Forgets other sessions' references (the connection is gone); returns the events.
    pub(crate) fn clear_remote(&mut self) -> Vec<ModelEvent> {
        std::mem::take(&mut self.remote)
            .into_keys()
            .map(|(session, reference)| ModelEvent::RemoteReference {
                session,
                user: None,
                reference,
                change: RemoteReferenceChange::Unshared,
            })
            .collect()
    }

    /// Another session closed the model: its references are gone; returns the events.
    pub(crate) fn session_closed(&mut self, closed: &SessionId) -> Vec<ModelEvent> {
        let keys: Vec<(SessionId, ReferenceKey)> =
            self.remote.keys().filter(|(session, _)| session == closed).cloned().collect();
        keys.into_iter()
            .map(|key| {
                self.remote.remove(&key);
                let (session, reference) = key;
                let change = RemoteReferenceChange::Unshared;
                ModelEvent::RemoteReference { session, user: None, reference, change }
            })
            .collect()
    }

    /// Another session's change, relayed at the confirmed version.
    pub(crate) fn remote_change(
        &mut self,
        session: SessionId,
        change: ReferenceChange,
        replica: &ModelReplica,
    ) -> Vec<ModelEvent> {
        let mut events = Vec::new();
        let mut event = |reference: &ReferenceKey, change| {
            let (session, reference) = (session.clone(), reference.clone());
            events.push(ModelEvent::RemoteReference { session, user: None, reference, change });
        };
        let key = |reference: &ReferenceKey| (session.clone(), reference.clone());
        let set = |value: Option<ReferenceValue>, reference: &ReferenceKey| match value
            .and_then(|v| shown(reference, v, replica))
        {
            Some(value) => RemoteReferenceChange::Set(value),
            None => RemoteReferenceChange::Cleared,
        };
        match change {
            ReferenceChange::Share { reference, value } => {
                let new = self.remote.insert(key(&reference), value.clone()).is_none();
                if new {
                    event(&reference, RemoteReferenceChange::Shared);
                }
                if value.is_some() || !new {
                    event(&reference, set(value, &reference));
                }
            }
            ReferenceChange::Set { reference, value, version } => {
                // The server relays it at the version this client holds at this point of
                // the stream; anything else cannot be placed.
                if version != replica.confirmed_version() {
                    return events;
                }
                let new = self.remote.insert(key(&reference), Some(value.clone())).is_none();
                if new {
                    event(&reference, RemoteReferenceChange::Shared);
                }
                event(&reference, set(Some(value), &reference));
            }
            ReferenceChange::Clear { reference } => {
                if let Some(value) = self.remote.get_mut(&key(&reference)) {
                    *value = None;
                    event(&reference, RemoteReferenceChange::Cleared);
                }
            }
            ReferenceChange::Unshare { reference } => {
                if self.remote.remove(&key(&reference)).is_some() {
                    event(&reference, RemoteReferenceChange::Unshared);
                }
            }
        }
        events
    }

    /// Another session's reference as it applies to the local view: `None` when not
    /// shared, `Some(None)` when shared without a value.
    pub(crate) fn remote(
        &self,
        session: &SessionId,
        key: &ReferenceKey,
        replica: &ModelReplica,
    ) -> Option<Option<ReferenceValue>> {
        let value = self.remote.get(&(session.clone(), key.clone()))?;
        Some(value.clone().and_then(|v| shown(key, v, replica)))
    }

    /// Every other session's reference, as it applies to the local view.
    pub(crate) fn remote_all(&self, replica: &ModelReplica) -> Vec<SharedReference> {
        self.remote
            .iter()
            .map(|((session, reference), value)| SharedReference {
                session: session.clone(),
                reference: reference.clone(),
                value: value.clone().and_then(|v| shown(reference, v, replica)),
            })
            .collect()
    }
}

/// A value at the confirmed version, moved through the local changes not yet committed.
fn shown(
    key: &ReferenceKey,
    value: ReferenceValue,
    replica: &ModelReplica,
) -> Option<ReferenceValue> {
    let local = replica.local();
    replica
        .unacknowledged()
        .try_fold(value, |value, operation| reference::transform(key, value, operation, local))
}

/// What to send for this client's reference `key` with `value` (in the local view's terms):
/// the value at the confirmed version, and whether it is exact (no uncommitted local change
/// moved it). `None` when it cannot be said at the confirmed version yet (its element, or an
/// element it names, is not committed).
pub(crate) fn server_form(
    key: &ReferenceKey,
    value: ReferenceValue,
    replica: &ModelReplica,
) -> Option<(ReferenceValue, bool)> {
    let local: Vec<&Operation> = replica.unacknowledged().collect();
    let exact = !local.iter().any(|op| reference::touches(key, op));
    let value = local
        .iter()
        .rev()
        .try_fold(value, |value, operation| reference::untransform(key, value, operation))?;
    reference::check(&replica.confirmed().data, key, &value).ok()?;
    Some((value, exact))
}
