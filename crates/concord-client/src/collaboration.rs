//! Working together on an open model: who else has it open ([`RealTimeModel::collaborators`],
//! with `CollaboratorOpened` / `CollaboratorClosed` events), and shared references: this client's (cursors, selections, highlighted properties and
//! elements it shows others) and other sessions'. A [`LocalReference`] is made by the
//! element or model it lives on — [`RealTimeString::index_reference`],
//! [`RealTimeString::range_reference`], [`RealTimeObject::property_reference`],
//! [`RealTimeModel::element_reference`] — and is shared, set, cleared and unshared through
//! it. Values are in the terms of the model's local view and move with every change to it;
//! other sessions' references are read with [`RealTimeModel::reference`] and
//! [`Element::reference`], and their changes arrive as
//! [`ModelEvent::RemoteReference`](concord_sync::ModelEvent::RemoteReference) events.
//!
//! [`RealTimeString::index_reference`]: crate::RealTimeString::index_reference
//! [`RealTimeString::range_reference`]: crate::RealTimeString::range_reference
//! [`RealTimeObject::property_reference`]: crate::RealTimeObject::property_reference

use concord_ot::{ElementId, IndexRange, ReferenceValue};
use concord_protocol::{Collaborator, ReferenceKey, SessionId, SharedReference};
use concord_sync::ClientEngine;
use tokio::sync::oneshot;

use crate::driver::Command;
use crate::error::ClientError;
use crate::model::{Element, RealTimeModel, RealTimeObject, RealTimeString};

/// What a reference points at, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    Index,
    Range,
    Property,
    Element,
}

/// One of this client's references. Dropping it does not unshare it.
#[derive(Debug, Clone)]
pub struct LocalReference {
    model: RealTimeModel,
    key: ReferenceKey,
    kind: ReferenceKind,
}

impl RealTimeModel {
    /// Runs `call` against the engine for this model and returns what it gives.
    pub(crate) async fn with_engine<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut ClientEngine) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        let call = Box::new(move |engine: &mut ClientEngine| {
            let _ = reply.send(call(engine));
        });
        self.domain().send(Command::Engine { model: self.id().clone(), call }).await?;
        answer.await.map_err(|_| ClientError::NotOpen(self.id().clone()))
    }

    /// A reference to elements of the model (`key` names it among this client's).
    pub fn element_reference(&self, key: &str) -> LocalReference {
        LocalReference::new(self.clone(), None, key, ReferenceKind::Element)
    }

    /// Another session's model-level reference `key`, as it applies to the local view:
    /// `None` when not shared, `Some(None)` when shared without a value.
    pub async fn reference(
        &self,
        session: &SessionId,
        key: &str,
    ) -> Result<Option<Option<ReferenceValue>>, ClientError> {
        self.reference_on(None, session, key).await
    }

    async fn reference_on(
        &self,
        element: Option<ElementId>,
        session: &SessionId,
        key: &str,
    ) -> Result<Option<Option<ReferenceValue>>, ClientError> {
        let (model, session) = (self.id().clone(), session.clone());
        let key = ReferenceKey { element, key: key.into() };
        self.with_engine(move |engine| engine.reference(&model, &session, &key)).await
    }

    /// Every other session's reference on the model (on its elements too), as it applies to
    /// the local view.
    pub async fn references(&self) -> Result<Vec<SharedReference>, ClientError> {
        let model = self.id().clone();
        self.with_engine(move |engine| engine.remote_references(&model)).await
    }

    /// The other sessions that have the model open, each with its user: listed when the
    /// model goes live on a connection, then kept current as they open and close it
    /// (`CollaboratorOpened` / `CollaboratorClosed` events). Empty while offline.
    pub async fn collaborators(&self) -> Result<Vec<Collaborator>, ClientError> {
        let model = self.id().clone();
        self.with_engine(move |engine| engine.collaborators(&model)).await
    }

    /// This client's session on the current (or last) connection, as others see it.
    pub async fn session_id(&self) -> Result<Option<SessionId>, ClientError> {
        self.with_engine(|engine| engine.session_id().cloned()).await
    }
}

impl Element {
    /// Another session's reference `key` on this element, as it applies to the local view:
    /// `None` when not shared, `Some(None)` when shared without a value.
    pub async fn reference(
        &self,
        session: &SessionId,
        key: &str,
    ) -> Result<Option<Option<ReferenceValue>>, ClientError> {
        self.model().reference_on(Some(self.id()), session, key).await
    }
}

impl RealTimeString {
    /// A cursor (or several) in this string.
    pub fn index_reference(&self, key: &str) -> LocalReference {
        let model = self.element().model().clone();
        LocalReference::new(model, Some(self.id()), key, ReferenceKind::Index)
    }

    /// A selection (or several) in this string.
    pub fn range_reference(&self, key: &str) -> LocalReference {
        let model = self.element().model().clone();
        LocalReference::new(model, Some(self.id()), key, ReferenceKind::Range)
    }
}

impl RealTimeObject {
    /// Highlighted properties of this object.
    pub fn property_reference(&self, key: &str) -> LocalReference {
        let model = self.element().model().clone();
        LocalReference::new(model, Some(self.id()), key, ReferenceKind::Property)
    }
}

impl LocalReference {
    fn new(
        model: RealTimeModel,
        element: Option<ElementId>,
        key: &str,
        kind: ReferenceKind,
    ) -> LocalReference {
        LocalReference { model, key: ReferenceKey { element, key: key.into() }, kind }
    }

    pub fn key(&self) -> &ReferenceKey {
        &self.key
    }

    pub fn kind(&self) -> ReferenceKind {
        self.kind
    }

    /// Shares it (without a value, unless it has one already).
    pub async fn share(&self) -> Result<(), ClientError> {
        let (model, key) = (self.model.id().clone(), self.key.clone());
        Ok(self.model.with_engine(move |engine| engine.share_reference(&model, key)).await??)
    }

    /// Sets its value (sharing it if needed). A value of another kind than the reference's,
    /// or one that does not fit the model (an index past the end of the string, an element
    /// that does not exist), is refused and changes nothing.
    pub async fn set(&self, value: ReferenceValue) -> Result<(), ClientError> {
        let kind = match &value {
            ReferenceValue::Index(_) => ReferenceKind::Index,
            ReferenceValue::Range(_) => ReferenceKind::Range,
            ReferenceValue::Property(_) => ReferenceKind::Property,
            ReferenceValue::Element(_) => ReferenceKind::Element,
        };
        if kind != self.kind {
            return Err(ClientError::InvalidValue(format!(
                "a {:?} value for a {:?} reference",
                kind, self.kind
            )));
        }
        self.store(Some(value)).await
    }

    /// Sets a cursor.
    pub async fn set_index(&self, index: usize) -> Result<(), ClientError> {
        self.set(ReferenceValue::Index(vec![index])).await
    }

    /// Sets a selection from `start` to `end` (`end` before `start`: a backward one).
    pub async fn set_range(&self, start: usize, end: usize) -> Result<(), ClientError> {
        self.set(ReferenceValue::Range(vec![IndexRange { start, end }])).await
    }

    /// Keeps it shared, without a value.
    pub async fn clear(&self) -> Result<(), ClientError> {
        self.store(None).await
    }

    async fn store(&self, value: Option<ReferenceValue>) -> Result<(), ClientError> {
        let (model, key) = (self.model.id().clone(), self.key.clone());
        let call = move |engine: &mut ClientEngine| engine.set_reference(&model, key, value);
        Ok(self.model.with_engine(call).await??)
    }

    /// Stops sharing it; false if it was not shared.
    pub async fn unshare(&self) -> Result<bool, ClientError> {
        let (model, key) = (self.model.id().clone(), self.key.clone());
        self.model.with_engine(move |engine| engine.unshare_reference(&model, &key)).await
    }

    /// Its value now, in the local view's terms: `None` when not shared, `Some(None)` when
    /// shared without a value (cleared, or never set). It ends, unshared, when its element
    /// is removed.
    pub async fn value(&self) -> Result<Option<Option<ReferenceValue>>, ClientError> {
        let (model, key) = (self.model.id().clone(), self.key.clone());
        self.model
            .with_engine(move |engine| {
                engine
                    .own_references(&model)
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, value)| value)
            })
            .await
    }
}
