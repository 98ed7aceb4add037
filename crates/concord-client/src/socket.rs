//! The WebSocket to the server (tokio-tungstenite): connect, handshake, frames in and out.

use std::time::Duration;

use concord_protocol::{
    Auth, ClientInfo, ClientMessage, ClientRequest, HandshakeResult, PROTOCOL_VERSION, RequestId,
    ServerMessage, ServerResponse, Session, decode, encode,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;

/// The handshake's request id (no other request is outstanding before it).
const HANDSHAKE: RequestId = RequestId(u64::MAX);

#[derive(Debug)]
pub(crate) struct Socket {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Connects to `url` and completes the handshake, within `timeout`.
pub(crate) async fn connect(
    url: &str,
    auth: Auth,
    timeout: Duration,
) -> Result<(Socket, Session), ClientError> {
    let failed = |reason: String| ClientError::Connect { url: url.to_owned(), reason };
    let attempt = async {
        // No Nagle: acks and small edits go out at once.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut socket = Socket { socket };
        let client =
            ClientInfo { name: "concord-client".into(), version: env!("CARGO_PKG_VERSION").into() };
        let request = ClientRequest::Handshake { protocol_version: PROTOCOL_VERSION, client, auth };
        socket.send(&ClientMessage::Request { id: HANDSHAKE, request }).await?;
        loop {
            match socket.receive().await {
                Some(Ok(ServerMessage::Response {
                    to,
                    response: ServerResponse::Handshake(result),
                })) if to == HANDSHAKE => {
                    return match result {
                        HandshakeResult::Accepted(session) => Ok((socket, session)),
                        HandshakeResult::Rejected(rejection) => {
                            Err(ClientError::Rejected(rejection))
                        }
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(failed("the server closed the connection".into())),
            }
        }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| ClientError::Timeout)?
}

impl Socket {
    pub(crate) async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let frame = encode(message).map_err(|e| ClientError::InvalidValue(e.to_string()))?;
        self.socket.send(Message::Binary(frame.into())).await.map_err(closed)
    }

    /// Sends several messages with one flush.
    pub(crate) async fn send_all(&mut self, messages: &[ClientMessage]) -> Result<(), ClientError> {
        for message in messages {
            let frame = encode(message).map_err(|e| ClientError::InvalidValue(e.to_string()))?;
            self.socket.feed(Message::Binary(frame.into())).await.map_err(closed)?;
        }
        self.socket.flush().await.map_err(closed)
    }

    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.close(None)).await;
    }
}

fn closed(error: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::Connect { url: String::new(), reason: error.to_string() }
}

/// The next message from the server; `None` once the connection is closed. Without a
/// socket it never resolves.
pub(crate) async fn next(
    socket: &mut Option<Socket>,
) -> Option<Result<ServerMessage, ClientError>> {
    match socket.as_mut() {
        Some(socket) => socket.receive().await,
        None => std::future::pending().await,
    }
}

impl Socket {
    async fn receive(&mut self) -> Option<Result<ServerMessage, ClientError>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Binary(frame)) => {
                    return Some(decode(&frame).map_err(|e| ClientError::Connect {
                        url: String::new(),
                        reason: format!("an undecodable frame: {e}"),
                    }));
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(closed(e))),
            }
        }
    }
}
