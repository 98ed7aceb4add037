//! A protocol-level WebSocket client for tests and tools that talk to a real server
//! (feature `wire`): it sends [`ClientMessage`]s, pairs responses with requests, and keeps
//! pushes and server requests that arrive meanwhile in order for [`WireClient::next`].
//!
//! It is deliberately thin — no engine, no store — so a test decides every message.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use concord_ot::{Document, Operation, ReplicaId, transform};
use concord_protocol::{
    Auth, ClientInfo, ClientMessage, ClientNotice, ClientRequest, ErrorReply, HandshakeResult,
    Limits, ModelId, ModelSnapshot, PROTOCOL_VERSION, Reassembler, RequestId, ServerMessage,
    ServerPush, ServerResponse, Session, encode,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait lasts before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// What ended a connection from the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

#[derive(Debug)]
pub struct WireClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Puts fragmented messages back together.
    frames: Reassembler<ServerMessage>,
    /// Frames received, counted for tests that check how a message travelled.
    received_frames: u64,
    /// Messages received while waiting for something else, oldest first.
    queued: VecDeque<ServerMessage>,
}

impl WireClient {
    /// Opens a WebSocket to `url` (for example `ws://127.0.0.1:PORT/ns/domain`).
    pub async fn connect(url: &str) -> anyhow::Result<WireClient> {
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .context("connecting timed out")?
        .with_context(|| format!("connecting to {url}"))?;
        Ok(WireClient {
            socket,
            next_id: 0,
            frames: Reassembler::new(Limits::DEFAULT),
            received_frames: 0,
            queued: VecDeque::new(),
        })
    }

    /// Connects and completes a handshake with `auth`, which must be accepted.
    pub async fn connect_as(url: &str, auth: Auth) -> anyhow::Result<(WireClient, Session)> {
        let mut client = WireClient::connect(url).await?;
        match client.handshake(auth).await? {
            HandshakeResult::Accepted(session) => Ok((client, session)),
            HandshakeResult::Rejected(rejection) => bail!("handshake rejected: {rejection:?}"),
        }
    }

    pub async fn handshake(&mut self, auth: Auth) -> anyhow::Result<HandshakeResult> {
        let client = ClientInfo { name: "concord-testkit".into(), version: "0".into() };
        let request = ClientRequest::Handshake { protocol_version: PROTOCOL_VERSION, client, auth };
        match self.request(request).await? {
            Ok(ServerResponse::Handshake(result)) => Ok(result),
            other => bail!("unexpected handshake answer {other:?}"),
        }
    }

    /// Sends `request` and waits for its response or error.
    pub async fn request(
        &mut self,
        request: ClientRequest,
    ) -> anyhow::Result<Result<ServerResponse, ErrorReply>> {
        let id = self.send_request(request).await?;
        self.response(id).await
    }

    /// Sends `request` without waiting; returns its id.
    pub async fn send_request(&mut self, request: ClientRequest) -> anyhow::Result<RequestId> {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        self.send(&ClientMessage::Request { id, request }).await?;
        Ok(id)
    }

    /// Waits for the response or error to request `id`, queueing everything else.
    pub async fn response(
        &mut self,
        id: RequestId,
    ) -> anyhow::Result<Result<ServerResponse, ErrorReply>> {
        let position = self.queued.iter().position(|m| answers(m, id));
        if let Some(message) = position.and_then(|i| self.queued.remove(i)) {
            return Ok(into_answer(message));
        }
        loop {
            let message = self.receive().await?;
            if answers(&message, id) {
                return Ok(into_answer(message));
            }
            self.queued.push_back(message);
        }
    }

    /// Submits one local change, seq `seq` of `replica` (a batch of just that seq).
    pub async fn submit(
        &mut self,
        model: &ModelId,
        replica: ReplicaId,
        seq: u64,
        base_version: u64,
        operation: Operation,
    ) -> anyhow::Result<()> {
        self.submit_batch(model, replica, seq, seq, base_version, operation).await
    }

    /// Submits the local changes `first_seq..=seq` of `replica` as one operation.
    pub async fn submit_batch(
        &mut self,
        model: &ModelId,
        replica: ReplicaId,
        first_seq: u64,
        seq: u64,
        base_version: u64,
        operation: Operation,
    ) -> anyhow::Result<()> {
        let model = model.clone();
        let notice =
            ClientNotice::Submit { model, replica, first_seq, seq, base_version, operation };
        self.send(&ClientMessage::Notice(notice)).await
    }

    pub async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        self.send_raw(encode(message)?).await
    }

    /// Sends arbitrary bytes as one binary message.
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.socket.send(Message::Binary(frame.into())).await.context("sending")
    }

    /// The next message: queued ones first.
    pub async fn next(&mut self) -> anyhow::Result<ServerMessage> {
        match self.queued.pop_front() {
            Some(message) => Ok(message),
            None => self.receive().await,
        }
    }

    /// The next push for which `select` returns something, queueing everything else.
    pub async fn push<T>(
        &mut self,
        mut select: impl FnMut(&ServerPush) -> Option<T>,
    ) -> anyhow::Result<T> {
        for i in 0..self.queued.len() {
            if let ServerMessage::Push(push) = &self.queued[i]
                && let Some(found) = select(push)
            {
                self.queued.remove(i);
                return Ok(found);
            }
        }
        loop {
            let message = self.receive().await?;
            if let ServerMessage::Push(push) = &message
                && let Some(found) = select(push)
            {
                return Ok(found);
            }
            self.queued.push_back(message);
        }
    }

    /// Waits for the server to close the connection, discarding messages; fails if it sends
    /// nothing and keeps it open.
    pub async fn closed(&mut self) -> anyhow::Result<Closed> {
        loop {
            let next = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .context("the server did not close the connection")?;
            match next {
                None => return Ok(Closed { code: None, reason: String::new() }),
                Some(Err(_)) => return Ok(Closed { code: None, reason: String::new() }),
                Some(Ok(Message::Close(frame))) => return Ok(close_of(frame)),
                Some(Ok(Message::Binary(frame))) => {
                    self.received_frames += 1;
                    self.queued.extend(self.frames.push(&frame)?);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// How many binary frames arrived so far (a fragmented message counts each fragment).
    pub fn received_frames(&self) -> u64 {
        self.received_frames
    }

    /// Messages received and not yet taken.
    pub fn queued(&self) -> &VecDeque<ServerMessage> {
        &self.queued
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.socket.close(None).await.context("closing")
    }

    async fn receive(&mut self) -> anyhow::Result<ServerMessage> {
        loop {
            let next = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .context("timed out waiting for the server")?;
            match next {
                None => bail!("the server closed the connection"),
                Some(Err(e)) => bail!("connection failed: {e}"),
                Some(Ok(Message::Binary(frame))) => {
                    self.received_frames += 1;
                    if let Some(message) = self.frames.push(&frame)? {
                        return Ok(message);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    bail!("the server closed the connection: {:?}", close_of(frame))
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

fn close_of(frame: Option<CloseFrame>) -> Closed {
    match frame {
        Some(frame) => Closed { code: Some(frame.code.into()), reason: frame.reason.to_string() },
        None => Closed { code: None, reason: String::new() },
    }
}

fn answers(message: &ServerMessage, id: RequestId) -> bool {
    match message {
        ServerMessage::Response { to, .. } => *to == id,
        ServerMessage::Error { to, .. } => *to == Some(id),
        _ => false,
    }
}

fn into_answer(message: ServerMessage) -> Result<ServerResponse, ErrorReply> {
    match message {
        ServerMessage::Response { response, .. } => Ok(response),
        ServerMessage::Error { error, .. } => Err(error),
        _ => unreachable!("only answers are passed here"),
    }
}

/// A client's copy of one model with at most one submission in flight: it applies its own
/// operations at once, and transforms remote ones against the one in flight (the same
/// control algorithm as the sync engine, for a single in-flight operation and nothing
/// pending).
#[derive(Debug, Clone)]
pub struct Editor {
    pub model: ModelId,
    pub replica: ReplicaId,
    pub document: Document,
    /// The last server version this copy includes.
    pub version: u64,
    next_seq: u64,
    in_flight: Option<(u64, Operation)>,
}

/// What a push meant to an [`Editor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The in-flight operation was committed at `version`.
    Ack { seq: u64, version: u64 },
    /// Another session's operation was applied.
    Remote { version: u64 },
    /// The push was about something else.
    Other,
}

impl Editor {
    pub fn new(model: ModelId, replica: ReplicaId, snapshot: &ModelSnapshot) -> Editor {
        Editor {
            model,
            replica,
            document: snapshot.data.clone(),
            version: snapshot.version,
            next_seq: 1,
            in_flight: None,
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Applies `operation` here and returns the notice that submits it.
    pub fn submit(&mut self, operation: Operation) -> anyhow::Result<ClientNotice> {
        if self.in_flight.is_some() {
            bail!("one submission is already in flight");
        }
        self.document.apply(&operation).context("applying a local operation")?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight = Some((seq, operation.clone()));
        Ok(ClientNotice::Submit {
            model: self.model.clone(),
            replica: self.replica,
            first_seq: seq,
            seq,
            base_version: self.version,
            operation,
        })
    }

    /// Takes a push into account.
    pub fn receive(&mut self, push: &ServerPush) -> anyhow::Result<Received> {
        match push {
            ServerPush::Ack { model, seq, version, .. } if *model == self.model => {
                match self.in_flight.take() {
                    Some((expected, _)) if expected == *seq => {}
                    other => bail!("ack of seq {seq} while {other:?} was in flight"),
                }
                if *version != self.version + 1 {
                    bail!("ack at version {version}, expected {}", self.version + 1);
                }
                self.version = *version;
                Ok(Received::Ack { seq: *seq, version: *version })
            }
            ServerPush::RemoteOperation { model, operation } if *model == self.model => {
                if operation.version != self.version + 1 {
                    bail!("remote version {}, expected {}", operation.version, self.version + 1);
                }
                let remote = match self.in_flight.take() {
                    Some((seq, mine)) => {
                        let (remote, mine) = transform(operation.operation.clone(), mine);
                        self.in_flight = Some((seq, mine));
                        remote
                    }
                    None => operation.operation.clone(),
                };
                self.document.apply(&remote).context("applying a remote operation")?;
                self.version = operation.version;
                Ok(Received::Remote { version: operation.version })
            }
            ServerPush::SubmitRejected { model, seq, error } if *model == self.model => {
                bail!("submission {seq} was rejected: {error:?}")
            }
            _ => Ok(Received::Other),
        }
    }
}
