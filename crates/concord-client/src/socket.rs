//! The WebSocket to the server: connect, handshake, frames in and out (a large message comes
//! in fragment frames, put back together here). Natively it is tokio-tungstenite; in a
//! browser, the page's WebSocket through gloo-net.

use std::time::Duration;

use concord_protocol::{
    Auth, ClientInfo, ClientMessage, ClientRequest, HandshakeResult, Limits, PROTOCOL_VERSION,
    Reassembler, RequestId, ServerMessage, ServerResponse, Session, encode,
};
use futures_util::{SinkExt, StreamExt};

use crate::error::ClientError;
use crate::rt;

/// The handshake's request id (no other request is outstanding before it).
const HANDSHAKE: RequestId = RequestId(u64::MAX);

fn encoded(message: &ClientMessage) -> Result<Vec<u8>, ClientError> {
    encode(message).map_err(|e| ClientError::InvalidValue(e.to_string()))
}

fn undecodable(error: impl std::fmt::Display) -> ClientError {
    ClientError::Connect { url: String::new(), reason: format!("an undecodable frame: {error}") }
}

fn closed(error: impl std::fmt::Display) -> ClientError {
    ClientError::Connect { url: String::new(), reason: error.to_string() }
}

/// Puts the server's fragmented messages back together (within the protocol's default
/// limits: 16 MiB frames, 256 MiB messages).
fn reassembler() -> Reassembler<ServerMessage> {
    Reassembler::new(Limits::DEFAULT)
}

/// Takes one binary frame: the message it completes, if any.
fn take(
    frames: &mut Reassembler<ServerMessage>,
    frame: &[u8],
) -> Option<Result<ServerMessage, ClientError>> {
    frames.push(frame).map_err(undecodable).transpose()
}

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use super::*;

    #[derive(Debug)]
    pub(crate) struct Socket {
        socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
        frames: Reassembler<ServerMessage>,
    }

    impl Socket {
        pub(super) async fn open(url: &str) -> Result<Socket, ClientError> {
            // No Nagle: acks and small edits go out at once.
            let (socket, _) =
                tokio_tungstenite::connect_async_with_config(url, None, true).await.map_err(
                    |e| ClientError::Connect { url: url.to_owned(), reason: e.to_string() },
                )?;
            Ok(Socket { socket, frames: reassembler() })
        }

        pub(crate) async fn send_all(
            &mut self,
            messages: &[ClientMessage],
        ) -> Result<(), ClientError> {
            for message in messages {
                self.socket
                    .feed(Message::Binary(encoded(message)?.into()))
                    .await
                    .map_err(closed)?;
            }
            self.socket.flush().await.map_err(closed)
        }

        pub(crate) async fn close(mut self) {
            let _ = rt::timeout(Duration::from_secs(1), self.socket.close(None)).await;
        }

        pub(super) async fn receive(&mut self) -> Option<Result<ServerMessage, ClientError>> {
            loop {
                match self.socket.next().await? {
                    Ok(Message::Binary(frame)) => {
                        if let Some(message) = take(&mut self.frames, &frame) {
                            return Some(message);
                        }
                    }
                    Ok(Message::Close(_)) => return None,
                    Ok(_) => continue,
                    Err(e) => return Some(Err(closed(e))),
                }
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod transport {
    use gloo_net::websocket::Message;
    use gloo_net::websocket::futures::WebSocket;

    use super::*;

    pub(crate) struct Socket {
        socket: WebSocket,
        frames: Reassembler<ServerMessage>,
    }

    impl std::fmt::Debug for Socket {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Socket")
        }
    }

    impl Socket {
        pub(super) async fn open(url: &str) -> Result<Socket, ClientError> {
            let socket = WebSocket::open(url)
                .map_err(|e| ClientError::Connect { url: url.to_owned(), reason: e.to_string() })?;
            Ok(Socket { socket, frames: reassembler() })
        }

        pub(crate) async fn send_all(
            &mut self,
            messages: &[ClientMessage],
        ) -> Result<(), ClientError> {
            for message in messages {
                self.socket.feed(Message::Bytes(encoded(message)?)).await.map_err(closed)?;
            }
            self.socket.flush().await.map_err(closed)
        }

        pub(crate) async fn close(self) {
            let _ = self.socket.close(None, None);
        }

        pub(super) async fn receive(&mut self) -> Option<Result<ServerMessage, ClientError>> {
            loop {
                match self.socket.next().await? {
                    Ok(Message::Bytes(frame)) => {
                        if let Some(message) = take(&mut self.frames, &frame) {
                            return Some(message);
                        }
                    }
                    Ok(Message::Text(_)) => return Some(Err(undecodable("a text frame"))),
                    Err(e) => return Some(Err(closed(e))),
                }
            }
        }
    }
}

pub(crate) use transport::Socket;

impl Socket {
    pub(crate) async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        self.send_all(std::slice::from_ref(message)).await
    }
}

/// Connects to `url` and completes the handshake, within `timeout`.
pub(crate) async fn connect(
    url: &str,
    auth: Auth,
    timeout: Duration,
) -> Result<(Socket, Session), ClientError> {
    let failed = |reason: &str| ClientError::Connect { url: url.to_owned(), reason: reason.into() };
    let attempt = async {
        let mut socket = Socket::open(url).await?;
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
                None => return Err(failed("the server closed the connection")),
            }
        }
    };
    let result = rt::timeout(timeout, attempt).await.ok_or(ClientError::Timeout)?;
    // The socket's own errors do not know the URL; name it.
    result.map_err(|error| match error {
        ClientError::Connect { url: unnamed, reason } if unnamed.is_empty() => {
            ClientError::Connect { url: url.to_owned(), reason }
        }
        other => other,
    })
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
