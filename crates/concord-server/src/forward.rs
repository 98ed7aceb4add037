//! Forwarding between cluster nodes (`docs/cluster.md`): a client connected to a node that
//! does not own a model it asks for is served by the owner through this node. The node
//! opens one upstream session to the owner per client connection and owner node, as the
//! client's own user and session (a reconnect token the nodes' shared key signs, so the
//! owner checks every permission on the real user, names the client by the session id it
//! knows, and a forwarding node can do nothing the user could not), and relays that model's messages both ways unchanged: the owner sequences,
//! acknowledges after its commit and broadcasts, as to any of its clients.
//!
//! Bounded: a connection has at most one upstream per node; what the client sends waits
//! (TCP pushes back) while an upstream's queue of [`UPSTREAM_QUEUE`] messages is full, and
//! what the owner sends goes through the client's outbox and its byte budget. When an
//! upstream ends (the owner stopped, died, or closed the session because its lease moved)
//! the client's connection is closed saying so, and the client reconnects and resyncs.
//! This is not a router: an upstream session is never forwarded again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_protocol::{
    Auth, ClientInfo, ClientMessage, ClientNotice, ClientRequest, HandshakeResult, Limits, ModelId,
    PROTOCOL_VERSION, Reassembler, ReconnectToken, RequestId, ServerMessage, ServerResponse,
    encode_with,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::outbox::Outbox;

/// Messages queued for one upstream before the client's reader waits.
const UPSTREAM_QUEUE: usize = 64;

/// The query string that marks an upstream session (never forwarded again).
pub(crate) const FORWARDED_QUERY: &str = "forwarded";

/// The request id of an upstream's handshake: the client's own ids are relayed as they are,
/// and its handshake is answered before any of them.
const HANDSHAKE_ID: RequestId = RequestId(u64::MAX);

/// The request id of the relay's own pings: the client's pings are answered by its node,
/// so the relay keeps the upstream session from looking silent to the owner itself.
const PING_ID: RequestId = RequestId(u64::MAX - 1);

/// The request id of the offline subscriptions the relay sends for the client (the part
/// of one of its `SubscribeOffline`s the owner serves): its node answers the client.
pub(crate) const SUBSCRIBE_ID: RequestId = RequestId(u64::MAX - 2);

/// The first id the relay gives an owner's request to the client: far above the ids the
/// client's own node gives its requests (each session counts from 1), so that neither
/// that node's nor another upstream's requests share one.
const ALIASES_FROM: u64 = 1 << 62;

/// The owner's requests to the client (auto-create) waiting for an answer: the id the
/// client was given for each, and the owner's own id, which the answer goes back under.
type Asked = Arc<Mutex<HashMap<RequestId, RequestId>>>;

/// One client connection's upstream sessions.
#[derive(Debug, Default)]
pub(crate) struct Forwarding {
    /// The models this connection's messages go to another node for: that node's URL.
    models: HashMap<ModelId, Arc<str>>,
    /// The most models `models` holds, so that what a client can make it hold is bounded.
    max_routes: usize,
    upstreams: HashMap<Arc<str>, Upstream>,
    /// How many owners' requests have been given ids (from [`ALIASES_FROM`]).
    aliases: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Upstream {
    sender: mpsc::Sender<Vec<u8>>,
    asked: Asked,
    task: JoinHandle<()>,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for upstream in self.upstreams.values() {
            upstream.task.abort();
        }
    }
}

/// The model a client message is about, if one.
pub(crate) fn model_of(message: &ClientMessage) -> Option<&ModelId> {
    match message {
        ClientMessage::Request {
            request:
                ClientRequest::OpenModel { model, .. }
                | ClientRequest::CloseModel { model }
                | ClientRequest::CreateModel { model, .. }
                | ClientRequest::DeleteModel { model, .. }
                | ClientRequest::Resync { model, .. }
                | ClientRequest::Sync { model, .. }
                | ClientRequest::ResyncComplete { model, .. }
                | ClientRequest::GetPermissions { model }
                | ClientRequest::SetPermissions { model, .. }
                | ClientRequest::HistoryOpen { model }
                | ClientRequest::HistoryFetch { model, .. },
            ..
        }
        | ClientMessage::Notice(
            ClientNotice::Submit { model, .. } | ClientNotice::Reference { model, .. },
        ) => Some(model),
        _ => None,
    }
}

impl Forwarding {
    /// Routes for at most `max_routes` models.
    pub(crate) fn new(max_routes: usize) -> Forwarding {
        let mut forwarding = Forwarding::default();
        forwarding.max_routes = max_routes;
        forwarding
    }

    /// Where `message` goes, if to another node: the node of its model, or of the request
    /// it answers (whose id it then carries as that node gave it).
    pub(crate) fn route(&self, message: &mut ClientMessage) -> Option<Arc<str>> {
        if let ClientMessage::Response { to, .. } | ClientMessage::Error { to: Some(to), .. } =
            message
        {
            return self.upstreams.iter().find_map(|(url, upstream)| {
                let mut asked = upstream.asked.lock().unwrap_or_else(|p| p.into_inner());
                *to = asked.remove(to)?;
                Some(url.clone())
            });
        }
        model_of(message).and_then(|model| self.models.get(model).cloned())
    }

    /// From now on `model`'s messages go to the node at `url`; `false`, and nothing
    /// changes, if the connection routes as many models as it may already.
    pub(crate) fn forward(&mut self, model: ModelId, url: Arc<str>) -> bool {
        if self.models.len() >= self.max_routes && !self.models.contains_key(&model) {
            return false;
        }
        self.models.insert(model, url);
        true
    }

    /// Where `model`'s messages go, if to another node.
    pub(crate) fn url_of(&self, model: &ModelId) -> Option<Arc<str>> {
        self.models.get(model).cloned()
    }

    /// The nodes this connection has upstream sessions to.
    pub(crate) fn upstream_urls(&self) -> Vec<Arc<str>> {
        self.upstreams.keys().cloned().collect()
    }

    /// Sends `message` to the upstream session at `url` (`url` ending in the connection's
    /// domain path), opening it first if needed.
    pub(crate) async fn send(
        &mut self,
        url: Arc<str>,
        message: &ClientMessage,
        limits: &Limits,
        auth: impl FnOnce() -> Option<ReconnectToken>,
        outbox: &Outbox,
        liveness: Liveness,
    ) {
        let Ok(bytes) = encode_with(limits, message) else {
            // It was decoded under the same limits: it encodes under them.
            return;
        };
        if !self.upstreams.contains_key(&url) {
            let Some(auth) = auth() else {
                outbox.lose("this session cannot be forwarded to the node serving the model");
                return;
            };
            let (sender, receiver) = mpsc::channel(UPSTREAM_QUEUE);
            let asked = Asked::default();
            let relay = Relay {
                url: url.clone(),
                auth,
                limits: *limits,
                outbox: outbox.clone(),
                asked: asked.clone(),
                aliases: self.aliases.clone(),
                liveness,
            };
            let task = tokio::spawn(relay.run(receiver));
            self.upstreams.insert(url.clone(), Upstream { sender, asked, task });
        }
        let Some(upstream) = self.upstreams.get(&url) else { return };
        // A closed upstream has closed the client's connection already.
        let _ = upstream.sender.send(bytes).await;
    }
}

/// How an upstream session tells a live owner from one paused, cut off or gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// How often the relay pings the owner.
    pub(crate) keepalive: Duration,
    /// How long the owner may be silent (the handshake included) before the upstream
    /// ends: its lease time, after which a silent node has lost its models anyway, so the
    /// client, reconnecting, finds the node that took them over.
    pub(crate) silence: Duration,
}

/// One upstream session: the client's messages for models the owner serves go up, all the
/// owner's messages come down to the client.
struct Relay {
    url: Arc<str>,
    auth: ReconnectToken,
    limits: Limits,
    outbox: Outbox,
    asked: Asked,
    aliases: Arc<AtomicU64>,
    liveness: Liveness,
}

impl Relay {
    async fn run(self, outgoing: mpsc::Receiver<Vec<u8>>) {
        let why = match self.relay(outgoing).await {
            Ok(()) => "the server node serving a model of this session closed it".to_owned(),
            Err(why) => why,
        };
        tracing::info!(url = %self.url, %why, "an upstream session ended; its client reconnects");
        self.outbox.lose(&format!("{why}; reconnect and resend what was not acknowledged"));
    }

    async fn relay(&self, mut outgoing: mpsc::Receiver<Vec<u8>>) -> Result<(), String> {
        let url = format!("{}?{FORWARDED_QUERY}", self.url);
        let unreachable =
            |e: String| format!("the server node serving the model is unreachable: {e}");
        let Liveness { keepalive, silence } = self.liveness;
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let (mut socket, _) = tokio::time::timeout(silence, connecting)
            .await
            .map_err(|_| unreachable("it did not answer in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        // Moved on by every frame the owner sends (it answers the relay's pings).
        let mut deadline = tokio::time::Instant::now() + silence;
        let handshake = ClientMessage::Request {
            id: HANDSHAKE_ID,
            request: ClientRequest::Handshake {
                protocol_version: PROTOCOL_VERSION,
                client: ClientInfo {
                    name: "concord-server (forwarding)".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
                auth: Auth::Reconnect(self.auth.clone()),
            },
        };
        let bytes = encode_with(&self.limits, &handshake).map_err(|e| e.to_string())?;
        socket.send(Message::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
        let mut frames = Reassembler::<ServerMessage>::new(self.limits);
        let mut accepted = false;
        let mut keepalive = tokio::time::interval(keepalive);
        let ping = ClientMessage::Request { id: PING_ID, request: ClientRequest::Ping };
        let ping = encode_with(&self.limits, &ping).map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = keepalive.tick(), if accepted => {
                    let ping = Message::Binary(ping.clone().into());
                    socket.send(ping).await.map_err(|e| e.to_string())?;
                }
                bytes = outgoing.recv(), if accepted => {
                    // The client's connection is gone: so is this session.
                    let Some(bytes) = bytes else { return Ok(()) };
                    socket.send(Message::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(if accepted {
                        format!("the server node serving the model stopped answering for {silence:?}")
                    } else {
                        unreachable("it did not accept the session in time".into())
                    });
                }
                frame = socket.next() => {
                    deadline = tokio::time::Instant::now() + silence;
                    let frame = match frame {
                        Some(Ok(Message::Binary(frame))) => frame,
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(format!("the upstream session failed: {e}")),
                    };
                    let message = frames.push(&frame).map_err(|e| e.to_string())?;
                    let Some(message) = message else { continue };
                    match message {
                        ServerMessage::Response { to, response: ServerResponse::Handshake(result) }
                            if to == HANDSHAKE_ID =>
                        {
                            match result {
                                HandshakeResult::Accepted(_) => accepted = true,
                                HandshakeResult::Rejected(rejection) => {
                                    return Err(format!(
                                        "the server node serving the model refused the session: {}",
                                        rejection.message
                                    ));
                                }
                            }
                        }
                        ServerMessage::Response { to: PING_ID | SUBSCRIBE_ID, .. } => {}
                        // The client's node answered its subscription; the owner's refusal
                        // of its part is still told.
                        ServerMessage::Error { to: Some(SUBSCRIBE_ID), error } => {
                            self.outbox.message(&ServerMessage::Error { to: None, error });
                        }
                        ServerMessage::Request { id, request } => {
                            let alias = self.aliases.fetch_add(1, Ordering::Relaxed);
                            let alias = RequestId(ALIASES_FROM + alias);
                            self.asked.lock().unwrap_or_else(|p| p.into_inner()).insert(alias, id);
                            self.outbox.message(&ServerMessage::Request { id: alias, request });
                        }
                        message => self.outbox.message(&message),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use concord_protocol::{ClientResponse, ErrorCode, ErrorReply};

    use super::*;

    fn upstream(asked: &[(u64, u64)]) -> Upstream {
        let asked = asked.iter().map(|&(alias, id)| (RequestId(alias), RequestId(id))).collect();
        Upstream {
            sender: mpsc::channel(1).0,
            asked: Arc::new(Mutex::new(asked)),
            task: tokio::spawn(async {}),
        }
    }

    /// Two owners and the client's own node each asked the client something under id 1;
    /// the client's answers to the ids it was given go back to the node that asked, under
    /// that node's id, once; its answer to its own node's request stays there.
    #[tokio::test]
    async fn answers_go_back_to_the_node_that_asked_under_its_id() {
        let mut forwarding = Forwarding::new(10);
        let (b, c): (Arc<str>, Arc<str>) = ("ws://b/acme".into(), "ws://c/acme".into());
        forwarding.upstreams.insert(b.clone(), upstream(&[(ALIASES_FROM, 1)]));
        forwarding.upstreams.insert(c.clone(), upstream(&[(ALIASES_FROM + 1, 1)]));
        let answer =
            |to: u64| ClientMessage::Response { to: RequestId(to), response: ClientResponse::Pong };

        let mut to_c = answer(ALIASES_FROM + 1);
        assert_eq!(forwarding.route(&mut to_c), Some(c.clone()));
        assert!(matches!(to_c, ClientMessage::Response { to: RequestId(1), .. }));
        let mut to_b = ClientMessage::Error {
            to: Some(RequestId(ALIASES_FROM)),
            error: ErrorReply::new(ErrorCode::PERMISSION_DENIED, "no data"),
        };
        assert_eq!(forwarding.route(&mut to_b), Some(b));
        assert!(matches!(to_b, ClientMessage::Error { to: Some(RequestId(1)), .. }));

        // Answered already, and the client's node's own request: neither is forwarded.
        assert_eq!(forwarding.route(&mut answer(ALIASES_FROM + 1)), None);
        let mut own = answer(1);
        assert_eq!(forwarding.route(&mut own), None);
        assert!(matches!(own, ClientMessage::Response { to: RequestId(1), .. }));
    }

    #[test]
    fn routes_are_bounded_in_number() {
        let mut forwarding = Forwarding::new(2);
        let (b, c): (Arc<str>, Arc<str>) = ("ws://b/acme".into(), "ws://c/acme".into());
        let model = |id: &str| ModelId::new(id).unwrap();
        assert!(forwarding.forward(model("one"), b.clone()));
        assert!(forwarding.forward(model("two"), b.clone()));
        assert!(!forwarding.forward(model("three"), b.clone()), "past the bound");
        assert_eq!(forwarding.url_of(&model("three")), None);
        // A model already routed moves to another node whatever the bound.
        assert!(forwarding.forward(model("one"), c.clone()));
        assert_eq!(forwarding.url_of(&model("one")), Some(c));
    }
}
