//! One WebSocket connection: the handshake, then every client message through the
//! connection's [`SessionHost`], which answers what needs no model and says which model
//! each request is for; the model tasks answer the rest through the outbox.
//!
//! The connection has two halves: this reader, and a writer task that drains the outbox
//! into the socket (and pages long replays out of the store), sending every message larger
//! than a fragment as fragment frames. Either half ending, the server shutting down, or
//! the outbox overflowing ends both.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use concord_protocol::{
    CLOSE_UNSUPPORTED_VERSION, ClientMessage, ClientRequest, DEFAULT_FRAGMENT_BYTES, DecodeError,
    ErrorCode, ErrorReply, HandshakeRejection, HandshakeResult, KnownModel, Limits, ModelId,
    PROTOCOL_VERSION, RequestId, ServerMessage, ServerPush, ServerResponse, Session, SessionId,
    decode_with, fragment_frame,
};
use concord_sync::host::{Notice, SessionHost, SessionOutput, SessionRef, Write, replay_page};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticated;
use crate::forward::{self, Forwarding};
use crate::hub::Hub;
use crate::model::ModelCommand;
use crate::outbox::{Outbound, Outbox, frame, max_message_bytes};
use crate::store::Job;
use crate::types::{Ending, ModelKey};

/// Close code for a connection closed because it broke the protocol (RFC 6455).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a server going away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that does not read what it is sent (a policy violation).
const CLOSE_POLICY: u16 = 1008;
/// Close code for a connection closed because the server could not do what it asked
/// (here: store the writes it waited on).
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Serves one upgraded WebSocket for `domain` until it closes.
pub(crate) async fn serve(socket: WebSocket, domain: Arc<str>, hub: Arc<Hub>, forwarded: bool) {
    let conn = hub.next_conn();
    let limits = &hub.config.limits;
    let (outbox, queue, notices) =
        Outbox::new(conn, limits.max_queued_messages, limits.max_queued_bytes);
    let overflow = outbox.overflow();
    let lost = outbox.lost();
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, queue, overflow.clone(), hub.clone()));
    let limiter = RateLimiter::new(hub.config.limits.messages_per_second, hub.config.limits.burst);
    let mut connection = Connection {
        hub: hub.clone(),
        domain,
        outbox,
        session: None,
        limiter,
        forwarded,
        // As many models as a session may have open and subscribed at once.
        forwarding: Forwarding::new(limits.max_open_models + limits.max_subscriptions),
        email: None,
    };
    let ending = tokio::select! {
        ending = connection.read_loop(stream, notices) => ending,
        () = overflow.cancelled() => Ending::Close(CLOSE_POLICY, "the client does not read fast enough".into()),
        () = hub.shutdown.cancelled() => Ending::Close(CLOSE_GOING_AWAY, "the server is shutting down".into()),
        () = lost.token.cancelled() => Ending::Close(CLOSE_INTERNAL_ERROR, "the session cannot go on; see its closing message".into()),
    };
    connection.leave_all().await;
    if connection.session.is_some() {
        hub.metrics.sessions.dec();
    }
    let closing = if lost.token.is_cancelled() {
        Some(lost.reason().to_owned())
    } else if hub.shutdown.is_cancelled() {
        Some("the server is shutting down".to_owned())
    } else {
        None
    };
    if let Some(message) = closing {
        let message = ServerMessage::Push(ServerPush::SessionClosing {
            code: ErrorCode::UNAVAILABLE,
            message,
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

/// The connection routes as many models to other cluster nodes as a session may have
/// open and subscribed at once.
#[derive(Debug)]
struct TooManyRoutes;

impl TooManyRoutes {
    const MESSAGE: &str = "this connection is served by other nodes for as many models as it may have open and subscribed";
}

struct Connection {
    hub: Arc<Hub>,
    domain: Arc<str>,
    outbox: Outbox,
    /// Set by the handshake: every later message goes through it.
    session: Option<SessionHost>,
    limiter: RateLimiter,
    /// This is another cluster node's upstream session for one of its clients: nothing of
    /// it is forwarded again.
    forwarded: bool,
    /// The models this connection is served by other cluster nodes for.
    forwarding: Forwarding,
    /// The session user's email, carried on in the reconnect tokens its upstream sessions
    /// authenticate with (as this session's user).
    email: Option<String>,
}

impl Connection {
    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut notices: mpsc::UnboundedReceiver<Notice>,
    ) -> Ending {
        let limits =
            Limits { max_frame_bytes: self.hub.config.limits.max_frame_bytes, ..Limits::DEFAULT };
        let handshake_deadline = Instant::now() + self.hub.config.limits.handshake_timeout;
        let silence = self.hub.config.silence_timeout;
        // When the client last sent anything: past `silence` after it, it is gone.
        let mut heard = Instant::now();
        loop {
            let next = if self.session.is_none() {
                match tokio::time::timeout_at(handshake_deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ending::Close(CLOSE_POLICY, "no handshake in time".into()),
                }
            } else {
                tokio::select! {
                    // Notices first, so that the session knows what closed before it reads on.
                    biased;
                    Some(notice) = notices.recv() => {
                        if let Some(session) = &mut self.session {
                            session.handle_notice(notice);
                        }
                        // A granted reference read goes back to its model.
                        self.dispatch().await;
                        continue;
                    }
                    next = tokio::time::timeout_at(heard + silence, stream.next()) => match next {
                        Ok(next) => next,
                        Err(_) => return Ending::Close(CLOSE_POLICY, "the client stopped answering".into()),
                    },
                }
            };
            heard = Instant::now();
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
            let message = match self.session {
                Some(_) => match self.forward(message, &limits).await {
                    Some(message) => message,
                    None => continue,
                },
                None => message,
            };
            match &mut self.session {
                None => {
                    if let Some(ending) = self.before_handshake(message).await {
                        return ending;
                    }
                }
                Some(session) => {
                    if let ClientMessage::Error { to: None, error } = &message {
                        tracing::debug!(
                            conn = self.outbox.conn,
                            ?error,
                            "the client reported an error"
                        );
                    }
                    session.handle(message);
                    self.dispatch().await;
                }
            }
        }
    }

    /// Sends `message` to the cluster node that serves its model, if another node does
    /// (`forward.rs`); returns what is left for this node to handle. An offline
    /// subscription is split: each node gets the models it serves.
    async fn forward(
        &mut self,
        mut message: ClientMessage,
        limits: &Limits,
    ) -> Option<ClientMessage> {
        if self.session.is_none() || self.hub.models.cluster.is_none() || self.forwarded {
            return Some(message);
        }
        if let ClientMessage::Request {
            id,
            request: ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace },
        } = message
        {
            return self.split_subscriptions(id, subscribe, unsubscribe, replace, limits).await;
        }
        match self.upstream_for(&mut message).await {
            Ok(Some(url)) => {
                self.send_upstream(url, &message, limits).await;
                None
            }
            Ok(None) => Some(message),
            Err(TooManyRoutes) => {
                if let ClientMessage::Request { id, .. } = message {
                    self.error(Some(id), ErrorCode::OVERLOADED, TooManyRoutes::MESSAGE);
                }
                None
            }
        }
    }

    /// The node `message` goes to, if another node serves its model.
    async fn upstream_for(
        &mut self,
        message: &mut ClientMessage,
    ) -> Result<Option<Arc<str>>, TooManyRoutes> {
        if let Some(url) = self.forwarding.route(message) {
            return Ok(Some(url));
        }
        // Asked for the first time here (and not served here): who serves it?
        let Some(model) = forward::model_of(message).cloned() else { return Ok(None) };
        let Some(session) = self.session.as_ref() else { return Ok(None) };
        let local = session.attached().any(|m| *m == model);
        if local || !matches!(message, ClientMessage::Request { .. }) {
            return Ok(None);
        }
        self.look_up_owners(&[&model]).await?;
        Ok(self.forwarding.url_of(&model))
    }

    /// Which of `models` other live nodes serve: their messages on this connection go there
    /// from now on. One query; a failed one leaves them to this node. Fails if the
    /// connection routes as many models to other nodes as it may.
    async fn look_up_owners(&mut self, models: &[&ModelId]) -> Result<(), TooManyRoutes> {
        let Some(cluster) = &self.hub.models.cluster else { return Ok(()) };
        if models.is_empty() {
            return Ok(());
        }
        let Ok(owners) = cluster.served_elsewhere(&self.domain, models).await else {
            return Ok(());
        };
        for (model, node) in owners {
            let url: Arc<str> = format!("{}/{}", node.trim_end_matches('/'), self.domain).into();
            tracing::debug!(model = %model, %url, "forwarding the model's requests");
            if !self.forwarding.forward(model, url) {
                return Err(TooManyRoutes);
            }
        }
        Ok(())
    }

    /// An offline subscription may name models served by several nodes: each other node
    /// serving some of them gets the subscription to those through the client's upstream
    /// session there (the relay takes its answer), and this node handles the rest and
    /// answers the client. With `replace`, every upstream is told its new set, if empty.
    async fn split_subscriptions(
        &mut self,
        id: RequestId,
        subscribe: Vec<KnownModel>,
        unsubscribe: Vec<ModelId>,
        replace: bool,
        limits: &Limits,
    ) -> Option<ClientMessage> {
        let session = self.session.as_ref()?;
        // Too many is refused here, as on a single node, without looking any up.
        if subscribe.len() <= self.hub.config.limits.max_subscriptions {
            let unrouted: Vec<ModelId> = (subscribe.iter().map(|known| &known.model))
                .filter(|model| self.forwarding.url_of(model).is_none())
                .filter(|model| !session.attached().any(|m| m == *model))
                .cloned()
                .collect();
            let unrouted: Vec<&ModelId> = unrouted.iter().collect();
            if self.look_up_owners(&unrouted).await.is_err() {
                self.error(Some(id), ErrorCode::OVERLOADED, TooManyRoutes::MESSAGE);
                return None;
            }
        }
        let mut upstream: HashMap<Arc<str>, (Vec<KnownModel>, Vec<ModelId>)> = HashMap::new();
        if replace {
            for url in self.forwarding.upstream_urls() {
                upstream.entry(url).or_default();
            }
        }
        let (mut here, mut gone_here) = (Vec::new(), Vec::new());
        for known in subscribe {
            match self.forwarding.url_of(&known.model) {
                Some(url) => upstream.entry(url).or_default().0.push(known),
                None => here.push(known),
            }
        }
        for model in unsubscribe {
            match self.forwarding.url_of(&model) {
                Some(url) => upstream.entry(url).or_default().1.push(model),
                None => gone_here.push(model),
            }
        }
        for (url, (subscribe, unsubscribe)) in upstream {
            let request = ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace };
            let message = ClientMessage::Request { id: forward::SUBSCRIBE_ID, request };
            self.send_upstream(url, &message, limits).await;
        }
        let request =
            ClientRequest::SubscribeOffline { subscribe: here, unsubscribe: gone_here, replace };
        Some(ClientMessage::Request { id, request })
    }

    /// Sends `message` through this connection's upstream session to the node at `url`.
    async fn send_upstream(&mut self, url: Arc<str>, message: &ClientMessage, limits: &Limits) {
        let (Some(session), Some(cluster)) = (&self.session, &self.hub.models.cluster) else {
            return;
        };
        let (user, session) = (session.session().user.clone(), session.session().session.clone());
        // Well within the owner's silence timeout and its lease time (the nodes' settings
        // are alike): an owner silent for its lease time has lost its models.
        let silence = cluster.lease_ttl();
        let keepalive =
            (self.hub.config.silence_timeout.min(silence) / 4).max(Duration::from_millis(100));
        let liveness = forward::Liveness { keepalive, silence };
        // A fresh token for each new upstream: the session may be older than a token lives.
        let (auth, email) = (&self.hub.auth, self.email.as_deref());
        let token = || auth.upstream_token(&user, email, &session).ok();
        self.forwarding.send(url, message, limits, token, &self.outbox, liveness).await;
    }

    fn error(&self, to: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.hub.metrics.refused(code);
        self.outbox.message(&ServerMessage::Error { to, error: ErrorReply::new(code, message) });
    }

    fn respond(&self, to: RequestId, response: ServerResponse) {
        self.outbox.message(&ServerMessage::Response { to, response });
    }

    /// Carries out what the session produced: replies now, requests to their models.
    async fn dispatch(&mut self) {
        let Some(session) = &mut self.session else { return };
        let from = session.session().clone();
        while let Some(output) = session.poll_output() {
            match output {
                SessionOutput::Reply(message) => {
                    self.hub.metrics.sent(&message);
                    self.outbox.message(&message);
                }
                SessionOutput::ToModel { model, request } => {
                    let key = ModelKey { domain: self.domain.clone(), model };
                    let command =
                        ModelCommand { from: from.clone(), outbox: self.outbox.clone(), request };
                    self.hub.send(&key, command).await;
                }
                SessionOutput::ToPresence { request, presence } => {
                    self.hub.ephemeral.presence(&self.domain, &from, request, presence);
                }
                SessionOutput::ToActivity { request, activity } => {
                    self.hub.ephemeral.activity(&self.domain, &from, request, activity);
                }
                SessionOutput::ToIdentity { request, identity } => {
                    let answer =
                        self.hub.ephemeral.identities(&self.domain, &from.user.id, identity);
                    let message = match answer {
                        Ok(found) => ServerMessage::Response {
                            to: request,
                            response: ServerResponse::Identities(found),
                        },
                        Err(error) => ServerMessage::Error { to: Some(request), error },
                    };
                    self.hub.metrics.sent(&message);
                    self.outbox.message(&message);
                }
                SessionOutput::Query(read) => {
                    if let Some(outbound) = self.outbox.query(self.domain.clone(), *read) {
                        self.outbox.send(outbound);
                    }
                }
            }
        }
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
        let Authenticated { user, email, session: continued } = match self
            .hub
            .auth
            .authenticate_handshake(&auth)
        {
            Ok(found) => found,
            Err(e) => {
                tracing::info!(conn = self.outbox.conn, error = %e, "handshake refused");
                self.hub.metrics.refused(e.code());
                let rejection = HandshakeRejection {
                    code: e.code(),
                    message: e.to_string(),
                    retry_allowed: true,
                };
                self.respond(id, ServerResponse::Handshake(HandshakeResult::Rejected(rejection)));
                return None;
            }
        };
        let reconnect_token =
            match self.hub.auth.reconnect_token_with_email(&user, email.as_deref()) {
                Ok(token) => token,
                Err(e) => {
                    self.error(Some(id), ErrorCode::INTERNAL, e.to_string());
                    return None;
                }
            };
        // An upstream session from another node goes by its client's session id, so that
        // authors, collaborators and references name the session the client knows.
        let session = match continued {
            Some(session) if self.forwarded => session,
            _ => SessionId(uuid::Uuid::now_v7().to_string()),
        };
        tracing::debug!(conn = self.outbox.conn, user = %user.id.0, session = %session.0, "session started");
        let session_ref =
            SessionRef { conn: self.outbox.conn, session: session.clone(), user: user.clone() };
        self.hub.ephemeral.connected(&self.domain, &session_ref, self.outbox.clone());
        self.hub.ephemeral.load_identities(&self.domain, &self.hub.store).await;
        self.email = email.clone();
        let identity = self.hub.ephemeral.learn_identity(&self.domain, &session_ref, email);
        self.session = Some(SessionHost::new(session_ref, self.hub.config.session_limits()));
        self.hub.metrics.sessions.inc();
        let mut writes = vec![Write::PutUser { user: user.clone() }];
        if let Some(identity) = identity {
            writes.push(Write::PutIdentity { identity, seen: crate::model::now() });
        }
        let job = Job { domain: self.domain.clone(), writes, ..Default::default() };
        // The user record is bookkeeping; the handshake does not wait for it.
        let _ = self.hub.writer.submit(job).await;
        let accepted = Session {
            session,
            user,
            reconnect_token,
            server_version: env!("CARGO_PKG_VERSION").into(),
            limits: self.hub.config.told_limits(),
        };
        self.respond(id, ServerResponse::Handshake(HandshakeResult::Accepted(accepted)));
        None
    }

    /// Tells every model this connection used that it is gone.
    async fn leave_all(&mut self) {
        if let Some(session) = &mut self.session {
            session.disconnected();
            self.hub.ephemeral.disconnected(&self.domain, self.outbox.conn);
        }
        self.dispatch().await;
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
/// closed. What they hold of the connection's budget is given back once they are flushed to
/// the socket (a client that does not read keeps it held).
async fn write_one(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &mut mpsc::Receiver<Outbound>,
    outbound: Outbound,
    hub: &Hub,
) -> Result<bool, ()> {
    let mut written = Vec::new();
    let mut next = Some(outbound);
    while let Some(outbound) = next.take() {
        match outbound {
            Outbound::Frame { bytes, held } => {
                feed(sink, bytes).await?;
                written.push(held);
            }
            Outbound::Replay { key, after, through, held } => {
                replay(sink, hub, &key, after, through).await?;
                written.push(held);
            }
            Outbound::History { key, read, held } => {
                let message = hub.store.history(&key, &read).await;
                hub.metrics.sent(&message);
                let max_bytes = max_message_bytes(hub.config.limits.max_queued_bytes);
                let frame = frame(&message, max_bytes).ok_or(())?;
                feed(sink, frame).await?;
                written.push(held);
            }
            Outbound::Query { domain, read, held } => {
                let (config, limits) = (&hub.models.config, &hub.config.query);
                let message = hub.store.query(&domain, &read, config, limits).await;
                hub.metrics.sent(&message);
                let max_bytes = max_message_bytes(hub.config.limits.max_queued_bytes);
                let frame = frame(&message, max_bytes).ok_or(())?;
                feed(sink, frame).await?;
                written.push(held);
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
    drop(written);
    Ok(true)
}

/// Queues one encoded message on the socket: as it is, or — larger than a fragment — as
/// consecutive fragment frames (nothing else is written between them).
async fn feed(sink: &mut SplitSink<WebSocket, Message>, frame: Bytes) -> Result<(), ()> {
    match fragment_frame(&frame, DEFAULT_FRAGMENT_BYTES) {
        None => sink.feed(Message::Binary(frame)).await.map_err(|_| ()),
        Some(fragments) => {
            for fragment in fragments {
                sink.feed(Message::Binary(fragment.into())).await.map_err(|_| ())?;
            }
            Ok(())
        }
    }
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
    let page_size = hub.models.config.page.max(1);
    // How many operations to read for the next page: a page is cut at a number of edits
    // too, so a read of `page_size` large operations would decode many times what is sent.
    // Start small, double while whole reads fit, and read one more than fitted otherwise.
    let mut read = page_size.min(FIRST_REPLAY_READ);
    let mut from = after;
    loop {
        let page = hub.store.operations(key, from, through, read).await;
        let operations = match page {
            Ok(operations) => operations,
            Err(e) => {
                tracing::error!(model = %key.model, error = %e, "reading a replay page failed");
                return Err(());
            }
        };
        let fetched = operations.len() as u64;
        let Some((push, next)) = replay_page(&key.model, operations, through) else {
            tracing::error!(model = %key.model, from, through, "the store lacks operations of a replay");
            return Err(());
        };
        let max_bytes = max_message_bytes(hub.config.limits.max_queued_bytes);
        // A page that cannot be sent (logged by `frame`) ends the connection: skipping it
        // would leave the client a gap in the model's history.
        let frame = frame(&ServerMessage::Push(push), max_bytes).ok_or(())?;
        hub.metrics.resync_pages.inc();
        feed(sink, frame).await?;
        sink.flush().await.map_err(|_| ())?;
        match next {
            Some(next) => {
                let kept = next - from;
                read = if kept == fetched { read.saturating_mul(2) } else { kept as usize + 1 };
                read = read.min(page_size);
                from = next;
            }
            None => return Ok(()),
        }
    }
}

/// The operations read for a replay's first page (see `replay`).
const FIRST_REPLAY_READ: usize = 16;

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

/// The shortest wait: timers fire on a millisecond grid at best, so waiting for each token
/// of a high rate would round every wait up and sustain far less than the rate (about 620
/// of 2,000 per second). A client over its rate waits for this long's worth of tokens at
/// once instead, and is credited for the time it actually waited.
const MIN_WAIT: Duration = Duration::from_millis(5);

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> RateLimiter {
        let rate = f64::from(rate.max(1));
        // The bucket holds at least what one shortest wait earns, or the wait would lose it.
        let burst = f64::from(burst.max(1)).max(rate * MIN_WAIT.as_secs_f64() + 1.0);
        RateLimiter { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Adds the tokens earned since the last call, up to the burst.
    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
    }

    async fn wait(&mut self) {
        self.refill();
        while self.tokens < 1.0 {
            // Credited for the time actually slept, which is never less than asked.
            let deficit = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(deficit).max(MIN_WAIT)).await;
            self.refill();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_sustains_its_rate_on_a_millisecond_timer() {
        // Paused time still fires timers on the millisecond grid, as a real one does.
        let mut limiter = RateLimiter::new(2_000, 1);
        let started = Instant::now();
        for _ in 0..4_000 {
            limiter.wait().await;
        }
        // 4,000 messages at 2,000 per second take two seconds (less the bucket it starts
        // with), not the six that waiting a rounded-up millisecond per message took.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1_950), "{elapsed:?}: over the rate");
        assert!(elapsed <= Duration::from_millis(2_050), "{elapsed:?}: under the rate");
    }
}
