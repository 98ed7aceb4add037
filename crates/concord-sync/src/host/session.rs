//! One connection's session after its handshake: which models it has attached and
//! subscribed, its limits, and where each message goes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_ot::ReferenceValue;
use concord_protocol::{
    ActivityRequest, ClientMessage, ClientNotice, ClientRequest, ClientResponse, ErrorCode,
    IdentityRequest, KnownModel, ModelId, PresenceRequest, ReferenceChange, ReferenceKey,
    RequestId, ServerLimits, ServerMessage, ServerResponse, Timestamp,
};

use super::{
    HistoryQuery, ModelRequest, Notice, QueryRead, SessionRef, SyncRequest, SyncStep,
    invalid_query, reply,
};

/// What one session may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Models open (or resynced) at once.
    pub max_open_models: usize,
    /// Models in the offline subscription set.
    pub max_subscriptions: usize,
    /// References shared at once, across the session's models.
    pub max_references: usize,
    /// Bytes one reference's key and value may take.
    pub max_reference_bytes: usize,
    /// Stored operations the session may make the server read at once to move its old
    /// references forward (a budget, spent per reference set at a version older than
    /// memory holds)...
    pub max_reference_reads: u64,
    /// ...and by how many it refills per second.
    pub reference_reads_per_second: u64,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            max_open_models: 1_000,
            max_subscriptions: 10_000,
            max_references: 256,
            max_reference_bytes: 4_096,
            max_reference_reads: 20_000,
            reference_reads_per_second: 1_000,
        }
    }
}

impl SessionLimits {
    /// These limits as a handshake tells them ([`ServerLimits`]), with the sizes of the
    /// frames the connection accepts and of the messages it sends, and the server's model
    /// size limit.
    pub fn told(
        &self,
        max_frame_bytes: usize,
        max_message_bytes: usize,
        max_model_bytes: u64,
    ) -> ServerLimits {
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        ServerLimits {
            max_frame_bytes: wide(max_frame_bytes),
            max_message_bytes: wide(max_message_bytes),
            max_open_models: wide(self.max_open_models),
            max_subscriptions: wide(self.max_subscriptions),
            max_shared_references: wide(self.max_references),
            max_reference_bytes: wide(self.max_reference_bytes),
            max_model_bytes,
        }
    }
}

/// What a session host produces.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOutput {
    /// For the connection, at once: it reveals nothing that is not yet durable.
    Reply(ServerMessage),
    /// For the model's host.
    ToModel { model: ModelId, request: ModelRequest },
    /// For the domain's [`PresenceHost`](super::PresenceHost), which answers it.
    ToPresence { request: RequestId, presence: PresenceRequest },
    /// For the domain's [`ActivityHost`](super::ActivityHost), which answers it.
    ToActivity { request: RequestId, activity: ActivityRequest },
    /// For the domain's [`IdentityHost`](super::IdentityHost), which answers it.
    ToIdentity { request: RequestId, identity: IdentityRequest },
    /// A query to answer from durable state ([`query_reply`](super::query_reply)).
    Query(Box<QueryRead>),
}

/// The server side of one authenticated connection. Feed it the client's messages
/// ([`SessionHost::handle`]) and the model hosts' notices for it
/// ([`SessionHost::handle_notice`]); drain [`SessionHost::poll_output`] after each call.
#[derive(Debug)]
pub struct SessionHost {
    session: SessionRef,
    limits: SessionLimits,
    /// Models attached here (opening, open or resynced), with the attachment that did it;
    /// a model host's [`Notice::Closed`] for that attachment removes it.
    attached: BTreeMap<ModelId, u64>,
    /// The attachments made by `Sync` requests: the model host closes each by itself, and
    /// its notice of that may come after the client's next `Sync` of the model.
    syncs: BTreeSet<u64>,
    subscribed: BTreeSet<ModelId>,
    /// The references this session shares, per model (bounded by the limits).
    references: BTreeMap<ModelId, BTreeSet<ReferenceKey>>,
    /// Our `AutoCreate` requests: their id → the client's open request and its model.
    auto_creates: BTreeMap<RequestId, (RequestId, ModelId)>,
    next_server_request: u64,
    next_attachment: u64,
    outputs: VecDeque<SessionOutput>,
    /// Stored operations the session may still make the server read for its references,
    /// in thousandths of an operation (so that a refill every millisecond adds up), as of
    /// `reads_at` (full until first spent).
    read_millis_left: u64,
    reads_at: Option<Timestamp>,
}

impl SessionHost {
    pub fn new(session: SessionRef, limits: SessionLimits) -> SessionHost {
        SessionHost {
            session,
            limits,
            attached: BTreeMap::new(),
            syncs: BTreeSet::new(),
            subscribed: BTreeSet::new(),
            references: BTreeMap::new(),
            auto_creates: BTreeMap::new(),
            next_server_request: 0,
            next_attachment: 0,
            outputs: VecDeque::new(),
            read_millis_left: limits.max_reference_reads.saturating_mul(1_000),
            reads_at: None,
        }
    }

    pub fn session(&self) -> &SessionRef {
        &self.session
    }

    /// The models attached to this session.
    pub fn attached(&self) -> impl Iterator<Item = &ModelId> {
        self.attached.keys()
    }

    /// The models in this session's offline subscription set.
    pub fn subscribed(&self) -> impl Iterator<Item = &ModelId> {
        self.subscribed.iter()
    }

    /// How many references this session shares, across its models.
    pub fn shared_references(&self) -> usize {
        self.references.values().map(BTreeSet::len).sum()
    }

    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.outputs.pop_front()
    }

    /// A model host's notice for this session.
    pub fn handle_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Closed { model, attachment, .. } => {
                if self.attached.get(&model) == Some(&attachment) {
                    self.detach(&model);
                }
            }
            Notice::ReferenceRead { model, change, operations, now, .. } => {
                if !self.attached.contains_key(&model) {
                    return;
                }
                self.refill_reads(now);
                let cost = operations.saturating_mul(1_000);
                if cost <= self.read_millis_left {
                    self.read_millis_left -= cost;
                    let request = ModelRequest::Reference { change, read_granted: true };
                    self.route(model, request);
                } else {
                    let message = format!(
                        "reference refused: moving it forward needs {operations} stored \
                         operations read, and this session may have {} more read now (at most \
                         {}, {} more each second)",
                        self.read_millis_left / 1_000,
                        self.limits.max_reference_reads,
                        self.limits.reference_reads_per_second
                    );
                    let push = concord_protocol::ServerPush::ReferenceRefused {
                        model,
                        reference: change.reference().clone(),
                        error: reply(ErrorCode::OVERLOADED, message),
                    };
                    self.reply(ServerMessage::Push(push));
                }
            }
        }
    }

    /// Adds what the read budget earned since it was last spent, up to its size.
    fn refill_reads(&mut self, now: Timestamp) {
        let limits = &self.limits;
        if let Some(at) = self.reads_at {
            // A clock that went back earns nothing.
            let elapsed_ms = u64::try_from(now.0.saturating_sub(at.0)).unwrap_or(0);
            let earned = elapsed_ms.saturating_mul(limits.reference_reads_per_second);
            let full = limits.max_reference_reads.saturating_mul(1_000);
            self.read_millis_left = self.read_millis_left.saturating_add(earned).min(full);
        }
        self.reads_at = Some(match self.reads_at {
            Some(at) if at.0 > now.0 => at,
            _ => now,
        });
    }

    /// The connection is gone: every model it used is told.
    pub fn disconnected(&mut self) {
        self.syncs.clear();
        let attached = std::mem::take(&mut self.attached).into_keys();
        let models: BTreeSet<ModelId> =
            attached.chain(std::mem::take(&mut self.subscribed)).collect();
        for model in models {
            self.route(model, ModelRequest::Disconnected);
        }
    }

    fn reply(&mut self, message: ServerMessage) {
        self.outputs.push_back(SessionOutput::Reply(message));
    }

    fn error(&mut self, to: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.reply(ServerMessage::Error { to, error: reply(code, message) });
    }

    fn route(&mut self, model: ModelId, request: ModelRequest) {
        self.outputs.push_back(SessionOutput::ToModel { model, request });
    }

    /// Forgets what the session had attached of `model`; its host drops its references.
    fn detach(&mut self, model: &ModelId) -> bool {
        self.auto_creates.retain(|_, (_, m)| m != model);
        self.references.remove(model);
        match self.attached.remove(model) {
            Some(attachment) => {
                self.syncs.remove(&attachment);
                true
            }
            None => false,
        }
    }

    /// Checks a reference change against the limits and keeps count of what is shared.
    fn reference(
        &mut self,
        model: &ModelId,
        change: &ReferenceChange,
    ) -> Result<(), (ErrorCode, String)> {
        let (key, value) = match change {
            ReferenceChange::Share { reference, value } => (reference, value.as_ref()),
            ReferenceChange::Set { reference, value, .. } => (reference, Some(value)),
            ReferenceChange::Clear { .. } => return Ok(()),
            ReferenceChange::Unshare { reference } => {
                if let Some(keys) = self.references.get_mut(model) {
                    keys.remove(reference);
                }
                return Ok(());
            }
        };
        let bytes = key.key.len() + value.map_or(0, reference_bytes);
        if bytes > self.limits.max_reference_bytes {
            let limit = self.limits.max_reference_bytes;
            return Err((
                ErrorCode::INVALID_REFERENCE,
                format!("a reference's key and value may take at most {limit} bytes"),
            ));
        }
        let shared: usize = self.references.values().map(BTreeSet::len).sum();
        let known = self.references.get(model).is_some_and(|keys| keys.contains(key));
        if !known && shared >= self.limits.max_references {
            let limit = self.limits.max_references;
            return Err((
                ErrorCode::OVERLOADED,
                format!("at most {limit} references may be shared at once"),
            ));
        }
        self.references.entry(model.clone()).or_default().insert(key.clone());
        Ok(())
    }

    /// Counts `model` as attached from now on, until its host says the attachment failed or
    /// ended.
    fn attach(&mut self, model: &ModelId) -> u64 {
        self.next_attachment += 1;
        if let Some(replaced) = self.attached.insert(model.clone(), self.next_attachment) {
            self.syncs.remove(&replaced);
        }
        self.next_attachment
    }

    fn at_open_limit(&mut self, id: RequestId, model: &ModelId) -> bool {
        if self.attached.contains_key(model) || self.attached.len() < self.limits.max_open_models {
            return false;
        }
        let message =
            format!("at most {} models may be open on one connection", self.limits.max_open_models);
        self.error(Some(id), ErrorCode::OVERLOADED, message);
        true
    }

    /// One message from the client.
    pub fn handle(&mut self, message: ClientMessage) {
        match message {
            ClientMessage::Request { id, request } => self.request(id, request),
            ClientMessage::Notice(ClientNotice::Submit {
                model,
                replica,
                first_seq,
                seq,
                base_version,
                operation,
            }) => {
                if self.attached.contains_key(&model) {
                    let submit =
                        ModelRequest::Submit { replica, first_seq, seq, base_version, operation };
                    self.route(model, submit);
                } else {
                    let error = reply(
                        ErrorCode::MODEL_NOT_OPEN,
                        "submit needs the model open on this connection",
                    );
                    let push = concord_protocol::ServerPush::SubmitRejected { model, seq, error };
                    self.reply(ServerMessage::Push(push));
                }
            }
            ClientMessage::Notice(ClientNotice::Reference { model, change }) => {
                if !self.attached.contains_key(&model) {
                    return;
                }
                match self.reference(&model, &change) {
                    Ok(()) => {
                        let request = ModelRequest::Reference { change, read_granted: false };
                        self.route(model, request);
                    }
                    Err((code, message)) => {
                        let reference = change.reference().clone();
                        let error = reply(code, message);
                        let push = concord_protocol::ServerPush::ReferenceRefused {
                            model,
                            reference,
                            error,
                        };
                        self.reply(ServerMessage::Push(push));
                    }
                }
            }
            ClientMessage::Response {
                to,
                response: ClientResponse::AutoCreate { collection, data, permissions },
            } => match self.auto_creates.remove(&to) {
                Some((request, model)) => {
                    let attachment = Some(self.attach(&model));
                    let create = ModelRequest::Create {
                        request,
                        collection,
                        data,
                        nonce: None,
                        permissions,
                        attachment,
                    };
                    self.route(model, create);
                }
                None => self.error(
                    None,
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("no request {to} is waiting for an answer"),
                ),
            },
            ClientMessage::Response { response: ClientResponse::Pong, .. } => {}
            ClientMessage::Error { to: Some(to), error } => {
                if let Some((request, model)) = self.auto_creates.remove(&to) {
                    self.attached.remove(&model);
                    // The model's host answers the open, as it answers every open it asked
                    // data for.
                    let declined =
                        ModelRequest::AutoCreateDeclined { request, message: error.message };
                    self.route(model, declined);
                }
            }
            // A failure the client reports about no request of ours: nothing to do.
            ClientMessage::Error { to: None, .. } => {}
        }
    }

    fn request(&mut self, id: RequestId, request: ClientRequest) {
        match request {
            ClientRequest::Handshake { .. } => self.error(
                Some(id),
                ErrorCode::UNEXPECTED_MESSAGE,
                "this connection already has a session",
            ),
            ClientRequest::Ping => {
                self.reply(ServerMessage::Response { to: id, response: ServerResponse::Pong })
            }
            ClientRequest::OpenModel { model, auto_create } => {
                if self.attached.contains_key(&model) {
                    self.error(
                        Some(id),
                        ErrorCode::MODEL_ALREADY_OPEN,
                        "the model is already open on this connection",
                    );
                } else if !self.at_open_limit(id, &model) {
                    let attachment = self.attach(&model);
                    let auto_create = auto_create.then(|| {
                        self.next_server_request += 1;
                        let server_request = RequestId(self.next_server_request);
                        self.auto_creates.retain(|_, (_, m)| *m != model);
                        self.auto_creates.insert(server_request, (id, model.clone()));
                        server_request
                    });
                    self.route(model, ModelRequest::Open { request: id, auto_create, attachment });
                }
            }
            ClientRequest::CloseModel { model } => {
                if self.detach(&model) {
                    self.route(model, ModelRequest::Close { request: id });
                } else {
                    self.error(
                        Some(id),
                        ErrorCode::MODEL_NOT_OPEN,
                        "the model is not open on this connection",
                    );
                }
            }
            ClientRequest::CreateModel { model, collection, data, nonce, permissions } => {
                let create = ModelRequest::Create {
                    request: id,
                    collection,
                    data,
                    nonce: Some(nonce),
                    permissions,
                    attachment: None,
                };
                self.route(model, create);
            }
            ClientRequest::DeleteModel { model, creation } => {
                self.route(model, ModelRequest::Delete { request: id, creation })
            }
            ClientRequest::Resync { model, known_version, in_flight } => {
                if !self.at_open_limit(id, &model) {
                    let attachment = self.attach(&model);
                    let resync =
                        ModelRequest::Resync { request: id, known_version, in_flight, attachment };
                    self.route(model, resync);
                }
            }
            ClientRequest::Sync { model, create, known_version, in_flight, submission } => {
                // A model a `Sync` attached is closing already (its host closes it before it
                // takes this one); any other would be closed under the client's own use.
                let open = self.attached.get(&model).is_some_and(|a| !self.syncs.contains(a));
                if open {
                    self.error(
                        Some(id),
                        ErrorCode::MODEL_ALREADY_OPEN,
                        "a model open on this connection syncs by resync and submissions",
                    );
                } else if !self.at_open_limit(id, &model) {
                    let attachment = self.attach(&model);
                    self.syncs.insert(attachment);
                    let sync = SyncRequest {
                        request: id,
                        create,
                        known_version,
                        in_flight,
                        submission,
                        attachment,
                        step: SyncStep::Create,
                    };
                    self.route(model, ModelRequest::Sync(Box::new(sync)));
                }
            }
            ClientRequest::ResyncComplete { model, .. } => {
                self.route(model, ModelRequest::ResyncComplete { request: id })
            }
            ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace } => {
                // A model named twice is caught up once (the last mention counts).
                let mut seen = BTreeSet::new();
                let mut subscribe: Vec<KnownModel> = subscribe
                    .into_iter()
                    .rev()
                    .filter(|known| seen.insert(known.model.clone()))
                    .collect();
                subscribe.reverse();
                let mut next = if replace { BTreeSet::new() } else { self.subscribed.clone() };
                for model in &unsubscribe {
                    next.remove(model);
                }
                next.extend(subscribe.iter().map(|known| known.model.clone()));
                if next.len() > self.limits.max_subscriptions {
                    let message = format!(
                        "at most {} models may be subscribed on one connection",
                        self.limits.max_subscriptions
                    );
                    return self.error(Some(id), ErrorCode::OVERLOADED, message);
                }
                let dropped: Vec<ModelId> = self.subscribed.difference(&next).cloned().collect();
                self.subscribed = next;
                for model in dropped {
                    self.route(model, ModelRequest::Unsubscribe);
                }
                self.reply(ServerMessage::Response { to: id, response: ServerResponse::Done });
                for known in subscribe {
                    self.route(known.model, ModelRequest::Subscribe { known: known.version });
                }
            }
            ClientRequest::GetPermissions { model } => {
                self.route(model, ModelRequest::GetPermissions { request: id })
            }
            ClientRequest::SetPermissions { model, grants } => {
                self.route(model, ModelRequest::SetPermissions { request: id, grants })
            }
            ClientRequest::Presence(presence) => {
                self.outputs.push_back(SessionOutput::ToPresence { request: id, presence })
            }
            ClientRequest::Activity(activity) => {
                self.outputs.push_back(SessionOutput::ToActivity { request: id, activity })
            }
            ClientRequest::Identity(identity) => {
                self.outputs.push_back(SessionOutput::ToIdentity { request: id, identity })
            }
            ClientRequest::HistoryOpen { model } => {
                self.route(model, ModelRequest::History { request: id, query: HistoryQuery::Open })
            }
            ClientRequest::HistoryFetch { model, start, checkpoint, max_operations, max_bytes } => {
                let query = HistoryQuery::Fetch { start, checkpoint, max_operations, max_bytes };
                self.route(model, ModelRequest::History { request: id, query })
            }
            ClientRequest::Query { query } => match concord_query::Query::parse(&query) {
                Ok(query) => {
                    let read = QueryRead { request: id, user: self.session.user.clone(), query };
                    self.outputs.push_back(SessionOutput::Query(Box::new(read)));
                }
                Err(error) => {
                    self.reply(ServerMessage::Error { to: Some(id), error: invalid_query(&error) })
                }
            },
        }
    }
}

/// About how many bytes a reference value holds, as [`SessionLimits::max_reference_bytes`]
/// counts them (with the reference's key).
pub fn reference_bytes(value: &ReferenceValue) -> usize {
    match value {
        ReferenceValue::Index(indices) => indices.len() * 8,
        ReferenceValue::Range(ranges) => ranges.len() * 16,
        ReferenceValue::Property(keys) => keys.iter().map(|k| k.len() + 8).sum(),
        ReferenceValue::Element(ids) => ids.len() * 16,
    }
}
