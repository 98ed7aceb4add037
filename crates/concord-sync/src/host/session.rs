//! One connection's session after its handshake: which models it has attached and
//! subscribed, its limits, and where each message goes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, ClientResponse, ErrorCode, ModelId, RequestId,
    ServerMessage, ServerResponse,
};

use super::{ModelRequest, Notice, SessionRef, reply};

/// What one session may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Models open (or resynced) at once.
    pub max_open_models: usize,
    /// Models in the offline subscription set.
    pub max_subscriptions: usize,
}

/// What a session host produces.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOutput {
    /// For the connection, at once: it reveals nothing that is not yet durable.
    Reply(ServerMessage),
    /// For the model's host.
    ToModel { model: ModelId, request: ModelRequest },
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
    subscribed: BTreeSet<ModelId>,
    /// Our `AutoCreate` requests: their id → the client's open request and its model.
    auto_creates: BTreeMap<RequestId, (RequestId, ModelId)>,
    next_server_request: u64,
    next_attachment: u64,
    outputs: VecDeque<SessionOutput>,
}

impl SessionHost {
    pub fn new(session: SessionRef, limits: SessionLimits) -> SessionHost {
        SessionHost {
            session,
            limits,
            attached: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            auto_creates: BTreeMap::new(),
            next_server_request: 0,
            next_attachment: 0,
            outputs: VecDeque::new(),
        }
    }

    pub fn session(&self) -> &SessionRef {
        &self.session
    }

    /// The models attached to this session.
    pub fn attached(&self) -> impl Iterator<Item = &ModelId> {
        self.attached.keys()
    }

    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.outputs.pop_front()
    }

    /// A model host's notice for this session.
    pub fn handle_notice(&mut self, notice: Notice) {
        let Notice::Closed { model, attachment, .. } = notice;
        if self.attached.get(&model) == Some(&attachment) {
            self.attached.remove(&model);
            self.auto_creates.retain(|_, (_, m)| *m != model);
        }
    }

    /// The connection is gone: every model it used is told.
    pub fn disconnected(&mut self) {
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

    /// Counts `model` as attached from now on, until its host says the attachment failed or
    /// ended.
    fn attach(&mut self, model: &ModelId) -> u64 {
        self.next_attachment += 1;
        self.attached.insert(model.clone(), self.next_attachment);
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
                seq,
                base_version,
                operation,
            }) => {
                if self.attached.contains_key(&model) {
                    self.route(
                        model,
                        ModelRequest::Submit { replica, seq, base_version, operation },
                    );
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
                if self.attached.contains_key(&model) {
                    self.route(model, ModelRequest::Reference { change });
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
                    let message = format!(
                        "no model {model}, and the client gave no data to create it: {}",
                        error.message
                    );
                    self.error(Some(request), ErrorCode::MODEL_NOT_FOUND, message);
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
                if self.attached.remove(&model).is_some() {
                    self.auto_creates.retain(|_, (_, m)| *m != model);
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
            ClientRequest::DeleteModel { model } => {
                self.route(model, ModelRequest::Delete { request: id })
            }
            ClientRequest::Resync { model, known_version, in_flight } => {
                if !self.at_open_limit(id, &model) {
                    let attachment = self.attach(&model);
                    let resync =
                        ModelRequest::Resync { request: id, known_version, in_flight, attachment };
                    self.route(model, resync);
                }
            }
            ClientRequest::ResyncComplete { model, .. } => {
                self.route(model, ModelRequest::ResyncComplete { request: id })
            }
            ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace } => {
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
        }
    }
}
