//! One WebSocket connection: the handshake, then every client message checked against the
//! session's limits and handed to the model it concerns. Replies that need no model are
//! answered here; everything else comes back from the model tasks through the outbox.
//!
//! The connection has two halves: this reader, and a writer task that drains the outbox
//! into the socket (and pages long replays out of the store). Either half ending, the
//! server shutting down, or the outbox overflowing ends both.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use concord_protocol::{
    CLOSE_UNSUPPORTED_VERSION, ClientMessage, ClientNotice, ClientRequest, ClientResponse,
    DecodeError, ErrorCode, ErrorReply, HandshakeRejection, HandshakeResult, Limits, ModelId,
    PROTOCOL_VERSION, RequestId, ServerMessage, ServerPush, ServerResponse, Session, SessionId,
    decode_with,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::model::{ModelCommand, Opened, PAGE, SessionRef};
use crate::outbox::{Outbound, Outbox, frame};
use crate::store::{ModelKey, Write};

/// Close code for a connection closed because it broke the protocol (RFC 6455).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a server going away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that does not read what it is sent (a policy violation).
const CLOSE_POLICY: u16 = 1008;

/// Serves one upgraded WebSocket for `domain` until it closes.
pub(crate) async fn serve(socket: WebSocket, domain: Arc<str>, hub: Arc<Hub>) {
    let conn = hub.next_conn();
    let (outbox, queue) = Outbox::new(conn, hub.config.limits.max_queued_messages);
    let overflow = outbox.overflow();
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, queue, overflow.clone(), hub.clone()));
    let mut connection = Connection {
        hub: hub.clone(),
        domain,
        outbox,
        session: None,
        open: HashSet::new(),
        subscribed: HashSet::new(),
        opening: Vec::new(),
        auto_creates: HashMap::new(),
        next_server_request: 0,
        limiter: RateLimiter::new(hub.config.limits.messages_per_second, hub.config.limits.burst),
    };
    let ending = tokio::select! {
        ending = connection.read_loop(stream) => ending,
        () = overflow.cancelled() => Ending::Close(CLOSE_POLICY, "the client does not read fast enough".into()),
        () = hub.shutdown.cancelled() => Ending::Close(CLOSE_GOING_AWAY, "the server is shutting down".into()),
    };
    connection.leave_all().await;
    if hub.shutdown.is_cancelled() {
        let message = ServerMessage::Push(ServerPush::SessionClosing {
            code: ErrorCode::UNAVAILABLE,
            message: "the server is shutting down".into(),
        });
        connection.outbox.message(&message);
    }
    connection.outbox.send(Outbound::Close(ending));
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer).await.is_err() {
        abort.abort();
    }
    tracing::debug!(conn, "connection closed");
}

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client went away.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

struct Connection {
    hub: Arc<Hub>,
    domain: Arc<str>,
    outbox: Outbox,
    session: Option<SessionRef>,
    /// Models open on this connection (opened, or resynced and not released).
    open: HashSet<ModelId>,
    subscribed: HashSet<ModelId>,
    /// Opens whose outcome the model task has not told yet.
    opening: Vec<(ModelId, oneshot::Receiver<()>)>,
    /// Our `AutoCreate` requests: their id → the client's open request and its model.
    auto_creates: HashMap<RequestId, (RequestId, ModelId)>,
    next_server_request: u64,
    limiter: RateLimiter,
}

impl Connection {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> Ending {
        let limits =
            Limits { max_frame_bytes: self.hub.config.limits.max_frame_bytes, ..Limits::DEFAULT };
        let handshake_deadline = Instant::now() + self.hub.config.limits.handshake_timeout;
        loop {
            let next = if self.session.is_none() {
                match tokio::time::timeout_at(handshake_deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ending::Close(CLOSE_POLICY, "no handshake in time".into()),
                }
            } else {
                stream.next().await
            };
            let bytes = match next {
                None | Some(Err(_)) => return Ending::Gone,
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(_))) => return Ending::Gone,
                Some(Ok(Message::Text(_))) => {
                    self.error(
                        None,
                        ErrorCode::MALFORMED_FRAME,
                        "frames are binary WebSocket messages",
                    );
                    return Ending::Close(
                        CLOSE_PROTOCOL_ERROR,
                        "text frames are not part of the protocol".into(),
                    );
                }
                Some(Ok(_)) => continue, // pings are answered by the WebSocket layer
            };
            self.limiter.wait().await;
            let message = match decode_with::<ClientMessage>(&limits, &bytes) {
                Ok(message) => message,
                Err(DecodeError::UnsupportedVersion { found, supported }) => {
                    let reason = format!(
                        "unsupported protocol version {found} (this server speaks version {supported})"
                    );
                    return Ending::Close(CLOSE_UNSUPPORTED_VERSION, reason);
                }
                Err(e) => {
                    self.error(None, e.code(), format!("the frame could not be decoded: {e}"));
                    return Ending::Close(CLOSE_PROTOCOL_ERROR, "malformed frame".into());
                }
            };
            if let Some(ending) = self.handle(message).await {
                return ending;
            }
        }
    }

    fn error(&self, to: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.outbox.message(&ServerMessage::Error { to, error: ErrorReply::new(code, message) });
    }

    fn respond(&self, to: RequestId, response: ServerResponse) {
        self.outbox.message(&ServerMessage::Response { to, response });
    }

    fn key(&self, model: &ModelId) -> ModelKey {
        ModelKey { domain: self.domain.clone(), model: model.clone() }
    }

    async fn to_model(&self, model: &ModelId, command: ModelCommand) {
        self.hub.send(&self.key(model), command).await;
    }

    /// Counts `model` as open from now on, until its model task says the open failed.
    fn opening(&mut self, model: &ModelId) -> Opened {
        let (opened, outcome) = oneshot::channel();
        self.open.insert(model.clone());
        self.opening.retain(|(m, _)| m != model);
        self.opening.push((model.clone(), outcome));
        Some(opened)
    }

    /// Forgets the models whose open failed.
    fn settle(&mut self) {
        let open = &mut self.open;
        self.opening.retain_mut(|(model, outcome)| match outcome.try_recv() {
            Ok(()) => false,
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                open.remove(model);
                false
            }
        });
    }

    async fn handle(&mut self, message: ClientMessage) -> Option<Ending> {
        self.settle();
        let Some(from) = self.session.clone() else {
            return self.before_handshake(message).await;
        };
        match message {
            ClientMessage::Request { id, request } => self.request(from, id, request).await,
            ClientMessage::Notice(ClientNotice::Submit {
                model,
                replica,
                seq,
                base_version,
                operation,
            }) => {
                if self.open.contains(&model) {
                    self.to_model(
                        &model,
                        ModelCommand::Submit { from, replica, seq, base_version, operation },
                    )
                    .await;
                } else {
                    let error = ErrorReply::new(
                        ErrorCode::MODEL_NOT_OPEN,
                        "submit needs the model open on this connection",
                    );
                    self.outbox.message(&ServerMessage::Push(ServerPush::SubmitRejected {
                        model,
                        seq,
                        error,
                    }));
                }
            }
            ClientMessage::Notice(ClientNotice::Reference { model, change }) => {
                if self.open.contains(&model) {
                    self.to_model(&model, ModelCommand::Reference { from, change }).await;
                }
            }
            ClientMessage::Response {
                to,
                response: ClientResponse::AutoCreate { collection, data, permissions },
            } => match self.auto_creates.remove(&to) {
                Some((request, model)) => {
                    let opened = self.opening(&model);
                    let command = ModelCommand::Create {
                        from,
                        request,
                        collection,
                        data,
                        nonce: None,
                        permissions,
                        open: true,
                        opened,
                    };
                    self.to_model(&model, command).await;
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
                    self.open.remove(&model);
                    let message = format!(
                        "no model {model}, and the client gave no data to create it: {}",
                        error.message
                    );
                    self.error(Some(request), ErrorCode::MODEL_NOT_FOUND, message);
                }
            }
            ClientMessage::Error { to: None, error } => {
                tracing::debug!(conn = self.outbox.conn, ?error, "the client reported an error");
            }
        }
        None
    }

    async fn before_handshake(&mut self, message: ClientMessage) -> Option<Ending> {
        let ClientMessage::Request {
            id,
            request: ClientRequest::Handshake { protocol_version, auth, .. },
        } = message
        else {
            if let ClientMessage::Request { id, .. } = message {
                self.error(
                    Some(id),
                    ErrorCode::NOT_AUTHENTICATED,
                    "the first request must be a handshake",
                );
            }
            return None;
        };
        if protocol_version != PROTOCOL_VERSION {
            let reason = format!(
                "unsupported protocol version {protocol_version} (this server speaks version {PROTOCOL_VERSION})"
            );
            return Some(Ending::Close(CLOSE_UNSUPPORTED_VERSION, reason));
        }
        let user = match self.hub.auth.authenticate(&auth) {
            Ok(user) => user,
            Err(e) => {
                tracing::info!(conn = self.outbox.conn, error = %e, "handshake refused");
                let rejection = HandshakeRejection {
                    code: e.code(),
                    message: e.to_string(),
                    retry_allowed: true,
                };
                self.respond(id, ServerResponse::Handshake(HandshakeResult::Rejected(rejection)));
                return None;
            }
        };
        let reconnect_token = match self.hub.auth.reconnect_token(&user) {
            Ok(token) => token,
            Err(e) => {
                self.error(Some(id), ErrorCode::INTERNAL, e.to_string());
                return None;
            }
        };
        let session = SessionId(uuid::Uuid::now_v7().to_string());
        tracing::debug!(conn = self.outbox.conn, user = %user.id.0, session = %session.0, "session started");
        self.session = Some(SessionRef {
            session: session.clone(),
            user: user.clone(),
            outbox: self.outbox.clone(),
        });
        let job = crate::store::Job {
            writes: vec![Write::PutUser { domain: self.domain.clone(), user: user.clone() }],
            ..Default::default()
        };
        // The user record is bookkeeping; the handshake does not wait for it.
        let _ = self.hub.writer.submit(job).await;
        let accepted = Session {
            session,
            user,
            reconnect_token,
            server_version: env!("CARGO_PKG_VERSION").into(),
        };
        self.respond(id, ServerResponse::Handshake(HandshakeResult::Accepted(accepted)));
        None
    }

    async fn request(&mut self, from: SessionRef, id: RequestId, request: ClientRequest) {
        let limits = self.hub.config.limits;
        match request {
            ClientRequest::Handshake { .. } => {
                self.error(
                    Some(id),
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "this connection already has a session",
                );
            }
            ClientRequest::Ping => self.respond(id, ServerResponse::Pong),
            ClientRequest::OpenModel { model, auto_create } => {
                if self.open.contains(&model) {
                    self.error(
                        Some(id),
                        ErrorCode::MODEL_ALREADY_OPEN,
                        "the model is already open on this connection",
                    );
                } else if self.open.len() >= limits.max_open_models {
                    self.error(
                        Some(id),
                        ErrorCode::OVERLOADED,
                        format!(
                            "at most {} models may be open on one connection",
                            limits.max_open_models
                        ),
                    );
                } else {
                    let opened = self.opening(&model);
                    let auto_create = auto_create.then(|| {
                        self.next_server_request += 1;
                        let server_request = RequestId(self.next_server_request);
                        self.auto_creates.retain(|_, (_, m)| *m != model);
                        self.auto_creates.insert(server_request, (id, model.clone()));
                        server_request
                    });
                    let command = ModelCommand::Open { from, request: id, auto_create, opened };
                    self.to_model(&model, command).await;
                }
            }
            ClientRequest::CloseModel { model } => {
                if self.open.remove(&model) {
                    self.auto_creates.retain(|_, (_, m)| *m != model);
                    self.to_model(&model, ModelCommand::Close { from, request: id }).await;
                } else {
                    self.error(
                        Some(id),
                        ErrorCode::MODEL_NOT_OPEN,
                        "the model is not open on this connection",
                    );
                }
            }
            ClientRequest::CreateModel { model, collection, data, nonce, permissions } => {
                let command = ModelCommand::Create {
                    from,
                    request: id,
                    collection,
                    data,
                    nonce: Some(nonce),
                    permissions,
                    open: false,
                    opened: None,
                };
                self.to_model(&model, command).await;
            }
            ClientRequest::DeleteModel { model } => {
                self.to_model(&model, ModelCommand::Delete { from, request: id }).await;
            }
            ClientRequest::Resync { model, known_version, in_flight } => {
                if !self.open.contains(&model) && self.open.len() >= limits.max_open_models {
                    self.error(
                        Some(id),
                        ErrorCode::OVERLOADED,
                        format!(
                            "at most {} models may be open on one connection",
                            limits.max_open_models
                        ),
                    );
                } else {
                    let opened = self.opening(&model);
                    let command = ModelCommand::Resync {
                        from,
                        request: id,
                        known_version,
                        in_flight,
                        opened,
                    };
                    self.to_model(&model, command).await;
                }
            }
            ClientRequest::ResyncComplete { model, .. } => {
                let command = ModelCommand::ResyncComplete { from, request: id };
                self.to_model(&model, command).await;
            }
            ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace } => {
                let mut next: HashSet<ModelId> =
                    if replace { HashSet::new() } else { self.subscribed.clone() };
                for model in &unsubscribe {
                    next.remove(model);
                }
                next.extend(subscribe.iter().map(|known| known.model.clone()));
                if next.len() > limits.max_subscriptions {
                    self.error(
                        Some(id),
                        ErrorCode::OVERLOADED,
                        format!(
                            "at most {} models may be subscribed on one connection",
                            limits.max_subscriptions
                        ),
                    );
                    return;
                }
                let dropped: Vec<ModelId> = self.subscribed.difference(&next).cloned().collect();
                self.subscribed = next;
                for model in dropped {
                    let conn = self.outbox.conn;
                    self.to_model(&model, ModelCommand::Unsubscribe { conn }).await;
                }
                self.respond(id, ServerResponse::Done);
                for known in subscribe {
                    let command =
                        ModelCommand::Subscribe { from: from.clone(), known: known.version };
                    self.to_model(&known.model, command).await;
                }
            }
            ClientRequest::GetPermissions { model } => {
                self.to_model(&model, ModelCommand::GetPermissions { from, request: id }).await;
            }
            ClientRequest::SetPermissions { model, grants } => {
                self.to_model(&model, ModelCommand::SetPermissions { from, request: id, grants })
                    .await;
            }
        }
    }

    /// Tells every model this connection used that it is gone.
    async fn leave_all(&mut self) {
        let conn = self.outbox.conn;
        let models: HashSet<ModelId> = self.open.drain().chain(self.subscribed.drain()).collect();
        for model in models {
            self.hub.send(&self.key(&model), ModelCommand::Disconnected { conn }).await;
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    overflow: CancellationToken,
    hub: Arc<Hub>,
) {
    let run = async {
        while let Some(outbound) = queue.recv().await {
            match write_one(&mut sink, &mut queue, outbound, &hub).await {
                Ok(true) => {}
                Ok(false) | Err(()) => break,
            }
        }
    };
    // A client that does not read may leave a write pending forever: overflow stops it.
    tokio::select! {
        () = run => {}
        () = overflow.cancelled() => {}
    }
}

/// Writes one outbound item and whatever frames follow it; `false` once the connection is
/// closed.
async fn write_one(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &mut mpsc::Receiver<Outbound>,
    outbound: Outbound,
    hub: &Hub,
) -> Result<bool, ()> {
    let mut next = Some(outbound);
    while let Some(outbound) = next.take() {
        match outbound {
            Outbound::Frame(frame) => sink.feed(Message::Binary(frame)).await.map_err(|_| ())?,
            Outbound::Replay { key, after, through } => {
                replay(sink, hub, &key, after, through).await?;
            }
            Outbound::Close(ending) => {
                sink.flush().await.map_err(|_| ())?;
                if let Ending::Close(code, reason) = ending {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                let _ = sink.close().await;
                return Ok(false);
            }
        }
        // Batch what is already queued into one flush.
        next = queue.try_recv().ok();
    }
    sink.flush().await.map_err(|_| ())?;
    Ok(true)
}

/// Sends the model's operations in `(after, through]` as `ResyncPage`s read from the store
/// one page at a time.
async fn replay(
    sink: &mut SplitSink<WebSocket, Message>,
    hub: &Hub,
    key: &ModelKey,
    after: u64,
    through: u64,
) -> Result<(), ()> {
    let mut from = after;
    loop {
        let store = hub.store.clone();
        let page_key = key.clone();
        let page =
            tokio::task::spawn_blocking(move || store.operations(&page_key, from, through, PAGE))
                .await
                .map_err(|_| ())?;
        let operations = match page {
            Ok(operations) => operations,
            Err(e) => {
                tracing::error!(model = %key.model, error = %e, "reading a replay page failed");
                return Err(());
            }
        };
        let Some(last_version) = operations.last().map(|op| op.version) else {
            tracing::error!(model = %key.model, from, through, "the store lacks operations of a replay");
            return Err(());
        };
        let last = last_version >= through;
        let push = ServerPush::ResyncPage { model: key.model.clone(), operations, last };
        if let Some(frame) = frame(&ServerMessage::Push(push)) {
            sink.send(Message::Binary(frame)).await.map_err(|_| ())?;
        }
        if last {
            return Ok(());
        }
        from = last_version;
    }
}

/// A token bucket: `rate` messages per second with bursts of `burst`. A client over its
/// rate is slowed down (its messages wait, and TCP pushes back), never answered with an
/// error: a refused submission would lose a change.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter { rate: f64::from(rate.max(1)), burst, tokens: burst, last: Instant::now() }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}
