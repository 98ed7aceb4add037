//! One simulated editor: its own WebSocket connection with the model open, a local copy of
//! the model, and the closed loop of single-character inserts.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Operation, OperationKind, PathSegment,
    ReferenceValue, ReplicaId, Value, transform,
};
use concord_protocol::{
    Auth, ClientInfo, ClientMessage, ClientNotice, ClientRequest, ClientResponse, CollectionId,
    CreationNonce, HandshakeResult, Limits, ModelId, PROTOCOL_VERSION, Reassembler,
    ReferenceChange, ReferenceKey, RequestId, ServerMessage, ServerPush, ServerRequest,
    ServerResponse, encode,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest wait for any single message; past it the run fails instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A handshaken connection: frames in and out, requests paired with their responses.
struct Connection {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Puts fragmented messages (large snapshots) back together.
    frames: Reassembler<ServerMessage>,
    next_request: u64,
}

impl Connection {
    async fn connect(url: &str) -> Result<Connection> {
        // tungstenite zero-fills its whole read buffer before every read (128 KiB by default),
        // which for small frames costs more than reading them; 8 KiB still holds many frames.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        // Nagle's algorithm off, as every interactive client should (ShareDB's `ws` does too).
        let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (socket, _) = tokio::time::timeout(WAIT, connecting)
            .await
            .context("connecting timed out")?
            .with_context(|| format!("connecting to {url}"))?;
        let frames = Reassembler::new(Limits::DEFAULT);
        let mut connection = Connection { socket, frames, next_request: 0 };
        let client = ClientInfo { name: "concord-load".into(), version: "0".into() };
        let auth = Auth::Anonymous { display_name: None };
        let handshake =
            ClientRequest::Handshake { protocol_version: PROTOCOL_VERSION, client, auth };
        match connection.request(handshake).await? {
            ServerResponse::Handshake(HandshakeResult::Accepted(_)) => Ok(connection),
            other => bail!("handshake not accepted: {other:?}"),
        }
    }

    async fn send(&mut self, message: &ClientMessage) -> Result<()> {
        let frame = encode(message).context("encoding a client message")?;
        self.socket.send(Message::binary(frame)).await.context("sending a frame")
    }

    /// The next protocol message; answers the server's pings on the way.
    async fn recv(&mut self) -> Result<ServerMessage> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .context("no message from the server for 30 s")?
                .context("the server closed the connection")?
                .context("reading a frame")?;
            let message = match frame {
                Message::Binary(bytes) => match self.frames.push(&bytes)? {
                    Some(message) => message,
                    None => continue,
                },
                Message::Close(close) => bail!("the server closed the connection: {close:?}"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Text(text) => bail!("unexpected text frame {text:?}"),
            };
            match message {
                ServerMessage::Request { id, request: ServerRequest::Ping } => {
                    self.send(&ClientMessage::Response { to: id, response: ClientResponse::Pong })
                        .await?;
                }
                other => return Ok(other),
            }
        }
    }

    /// Sends `request` and waits for its response; no operation may arrive meanwhile.
    async fn request(&mut self, request: ClientRequest) -> Result<ServerResponse> {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.send(&ClientMessage::Request { id, request }).await?;
        loop {
            match self.recv().await? {
                ServerMessage::Response { to, response } if to == id => return Ok(response),
                ServerMessage::Error { to, error } if to == Some(id) || to.is_none() => {
                    bail!("request refused: {error:?}")
                }
                ServerMessage::Push(push) if is_presence(&push) => {}
                other => bail!("unexpected message while waiting for a response: {other:?}"),
            }
        }
    }
}

/// A session that only stays connected: handshaken, answering the server's heartbeats, no
/// model open. What one costs the server is what `--idle` measures.
pub(crate) struct IdleSession {
    connection: Connection,
}

impl IdleSession {
    pub(crate) async fn connect(url: &str) -> Result<IdleSession> {
        Ok(IdleSession { connection: Connection::connect(url).await? })
    }

    /// Answers heartbeats until `until` (at most [`WAIT`] after the last message).
    pub(crate) async fn hold(mut self, until: Instant) -> Result<()> {
        loop {
            match tokio::time::timeout_at(until, self.connection.recv()).await {
                Err(_) => return Ok(()),
                Ok(Err(error)) => return Err(error.context("an idle session was dropped")),
                Ok(Ok(message)) => {
                    ensure!(
                        !matches!(message, ServerMessage::Error { .. }),
                        "an idle session got an error: {message:?}"
                    );
                }
            }
        }
    }
}

/// Pushes about other sessions, which the load tool ignores.
fn is_presence(push: &ServerPush) -> bool {
    matches!(
        push,
        ServerPush::CollaboratorOpened { .. }
            | ServerPush::CollaboratorClosed { .. }
            | ServerPush::RemoteReference { .. }
    )
}

/// Creates the benchmark model `{ "body": "" }` over a connection of its own; returns the
/// version it was created at.
pub(crate) async fn create_model(url: &str, model: &ModelId) -> Result<u64> {
    let mut connection = Connection::connect(url).await?;
    let mut ids = IdGenerator::new(ReplicaId(u64::MAX), 0);
    let data = Document::new(Value::from_json(&serde_json::json!({ "body": "" }), &mut ids)?)?;
    let request = ClientRequest::CreateModel {
        model: model.clone(),
        collection: CollectionId::new("load")?,
        data,
        nonce: CreationNonce(*b"concord-load-001"),
        permissions: None,
    };
    match connection.request(request).await? {
        ServerResponse::ModelCreated { version, .. } => Ok(version),
        other => bail!("unexpected answer to CreateModel: {other:?}"),
    }
}

/// What one editor did in its closed loop.
#[derive(Debug, Default)]
pub(crate) struct LoopStats {
    /// Submit-to-ack times of the operations acked inside the measured window.
    pub latencies: Vec<Duration>,
    /// Every operation acked, warm-up included.
    pub acked: u64,
}

/// One client with the model open and a local copy of it.
pub(crate) struct Editor {
    connection: Connection,
    model: ModelId,
    replica: ReplicaId,
    doc: Document,
    body: ElementId,
    /// The version of the last operation applied to `doc` (remote, or own and acked).
    version: u64,
    next_seq: u64,
    rng: SplitMix64,
    /// Moves the shared cursor `cursor` on every keystroke.
    cursors: bool,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Editor")
            .field("replica", &self.replica)
            .field("version", &self.version)
            .finish()
    }
}

impl Editor {
    /// Connects, handshakes and opens `model`.
    /// With `cursors`, shares the cursor it moves on every keystroke.
    pub(crate) async fn open(
        url: &str,
        model: &ModelId,
        replica: ReplicaId,
        cursors: bool,
    ) -> Result<Editor> {
        let mut connection = Connection::connect(url).await?;
        let opened = match connection
            .request(ClientRequest::OpenModel { model: model.clone(), auto_create: false })
            .await?
        {
            ServerResponse::ModelOpened(opened) => opened,
            other => bail!("unexpected answer to OpenModel: {other:?}"),
        };
        let doc = opened.snapshot.data;
        let body = doc
            .element_at(&[PathSegment::Key("body".into())])
            .context("the model has no \"body\" element")?;
        let mut editor = Editor {
            connection,
            model: model.clone(),
            replica,
            doc,
            body,
            version: opened.snapshot.version,
            next_seq: 1,
            rng: SplitMix64(replica.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            cursors,
        };
        if cursors {
            let share = ReferenceChange::Share { reference: editor.cursor(), value: None };
            editor.send_reference(share).await?;
        }
        Ok(editor)
    }

    fn cursor(&self) -> ReferenceKey {
        ReferenceKey { element: Some(self.body), key: "cursor".into() }
    }

    async fn send_reference(&mut self, change: ReferenceChange) -> Result<()> {
        let notice = ClientNotice::Reference { model: self.model.clone(), change };
        self.connection.send(&ClientMessage::Notice(notice)).await
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn body(&self) -> String {
        self.doc.text(self.body).unwrap_or_default()
    }

    /// The closed loop: insert one character at a random position of the local copy, submit
    /// it, wait for its ack while applying remote operations, repeat until `end`.
    pub(crate) async fn run(&mut self, warm_end: Instant, end: Instant) -> Result<LoopStats> {
        let mut stats = LoopStats::default();
        loop {
            let started = Instant::now();
            if started >= end {
                return Ok(stats);
            }
            let len = self.doc.text_len(self.body).context("the body is not a string")?;
            let index = (self.rng.next() % (len as u64 + 1)) as usize;
            let kind = OperationKind::StringSplice { index, delete_count: 0, insert: "x".into() };
            let operation: Operation = DiscreteOperation::new(self.body, kind).into();
            apply(&mut self.doc, &operation)?;
            let seq = self.next_seq;
            self.next_seq += 1;
            let submit = ClientNotice::Submit {
                model: self.model.clone(),
                replica: self.replica,
                first_seq: seq,
                seq,
                base_version: self.version,
                operation: operation.clone(),
            };
            self.connection.send(&ClientMessage::Notice(submit)).await?;
            if self.cursors {
                // The cursor in front of the new character, as of the operation's base
                // version: the server moves it through whatever was committed since.
                let value = ReferenceValue::Index(vec![index]);
                let version = self.version;
                let set = ReferenceChange::Set { reference: self.cursor(), value, version };
                self.send_reference(set).await?;
            }
            self.await_ack(seq, operation).await?;
            let acked = Instant::now();
            stats.acked += 1;
            if acked >= warm_end && acked < end {
                stats.latencies.push(acked - started);
            }
        }
    }

    /// Reads until the ack of `seq`, transforming the in-flight operation against every
    /// remote operation ordered before it.
    async fn await_ack(&mut self, seq: u64, mut in_flight: Operation) -> Result<()> {
        loop {
            match self.connection.recv().await? {
                ServerMessage::Push(ServerPush::Ack { seq: acked, version, .. })
                    if acked == seq =>
                {
                    ensure!(
                        version == self.version + 1,
                        "ack of seq {seq} at version {version}, expected {}",
                        self.version + 1
                    );
                    self.version = version;
                    return Ok(());
                }
                ServerMessage::Push(ServerPush::RemoteOperation { operation: remote, .. }) => {
                    self.check_next(remote.version)?;
                    let (remote_after, in_flight_after) = transform(remote.operation, in_flight);
                    apply(&mut self.doc, &remote_after)?;
                    in_flight = in_flight_after;
                    self.version = remote.version;
                }
                other => self.unexpected(other)?,
            }
        }
    }

    /// With nothing in flight, applies remote operations until the local copy is at `target`.
    pub(crate) async fn catch_up(&mut self, target: u64) -> Result<()> {
        while self.version < target {
            match self.connection.recv().await? {
                ServerMessage::Push(ServerPush::RemoteOperation { operation: remote, .. }) => {
                    self.check_next(remote.version)?;
                    apply(&mut self.doc, &remote.operation)?;
                    self.version = remote.version;
                }
                other => self.unexpected(other)?,
            }
        }
        Ok(())
    }

    fn check_next(&self, version: u64) -> Result<()> {
        ensure!(
            version == self.version + 1,
            "replica {}: remote operation at version {version}, expected {}",
            self.replica.0,
            self.version + 1
        );
        Ok(())
    }

    fn unexpected(&self, message: ServerMessage) -> Result<()> {
        match message {
            ServerMessage::Push(push) if is_presence(&push) => Ok(()),
            other => bail!("replica {}: unexpected message {other:?}", self.replica.0),
        }
    }
}

/// Applies an operation without keeping what it overwrote, as a client's replica does.
fn apply(doc: &mut Document, operation: &Operation) -> Result<()> {
    Ok(doc.apply_without_old(operation)?)
}

/// A small, fast, seeded generator for insert positions (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
