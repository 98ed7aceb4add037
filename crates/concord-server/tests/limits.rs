//! What the server limits at its front door, over real sockets: request heads that never
//! finish, connections in all and per source address, the rate of one connection's
//! messages, and what the web root serves. (Running out of file descriptors and the bytes
//! held for a client that does not read are tested against `concord serve` in its own
//! process, in the `concord` crate's `limits` tests.)
//!
//! They run on the embedded store only: these limits act before any request reaches the
//! store.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use concord_protocol::{ClientRequest, ServerMessage, ServerResponse};
use concord_testkit::wire::WireClient;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// How long a test waits for something the server should do before failing.
const PATIENCE: Duration = Duration::from_secs(15);

/// A TCP connection to `server` from the loopback address `source` (all of 127.0.0.0/8 is
/// loopback, so one machine can be several clients).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    Ok(socket.connect(server).await?)
}

/// Whether the server answers `GET /health` on `tcp` (which stays open, keep-alive):
/// `false` if it closes the connection instead.
async fn answers_health(tcp: &mut TcpStream) -> anyhow::Result<bool> {
    let request = b"GET /health HTTP/1.1\r\nHost: concord\r\n\r\n";
    if tcp.write_all(request).await.is_err() {
        return Ok(false);
    }
    let mut response = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
            .await
            .context("the server neither answered nor closed")?;
        match read {
            Ok(0) | Err(_) => return Ok(false),
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
        if response.ends_with(b"\r\n\r\nok") {
            return Ok(true);
        }
    }
}

/// Waits until the server closes `tcp` (end of stream or reset); `false` if it is still
/// open at `deadline`.
async fn closed_by(tcp: &mut TcpStream, deadline: Instant) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout_at(deadline, tcp.read_to_end(&mut sink)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_that_never_finish_are_closed_and_honest_clients_get_in() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let timeout = Duration::from_millis(500);
    let server = start(dir.path(), |c| c.limits.header_read_timeout = timeout).await?;
    // 200 sockets each send half an upgrade request and nothing more.
    let mut half_open = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(server.addr()).await?;
        tcp.write_all(b"GET /test/main HTTP/1.1\r\nHost: concord\r\nUpgrade: websocket\r\n")
            .await?;
        half_open.push(tcp);
    }
    let started = Instant::now();
    // An honest client gets in meanwhile...
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "hello").await?;
    // ... and every half-sent request is closed by the server.
    let deadline = Instant::now() + PATIENCE;
    for (n, tcp) in half_open.iter_mut().enumerate() {
        assert!(closed_by(tcp, deadline).await, "half-open socket {n} is still open");
    }
    assert!(started.elapsed() >= timeout / 2, "closed before its time");
    // The timeout is for request heads: a WebSocket session idle for longer stays open.
    tokio::time::sleep(timeout * 2).await;
    assert_eq!(body(&open(&mut alice, "doc").await?.data), "hello");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_all() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| {
        c.max_connections_per_address = 3;
        c.max_connections = 5;
        c.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await?;
    let addr = server.addr();
    let (one, two, three) =
        (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));

    // WebSocket sessions hold their connection's place: three from 127.0.0.1, and a fourth
    // is refused.
    let mut sessions = Vec::new();
    for user in ["a", "b", "c"] {
        sessions.push(connect(&server, user).await?);
    }
    assert!(WireClient::connect(&url(&server)).await.is_err(), "a 4th connection from one address");
    let mut plain = connect_from(one, addr).await?;
    assert!(!answers_health(&mut plain).await?, "a 4th plain HTTP connection from one address");
    // Another address is not affected.
    let mut other = connect_from(two, addr).await?;
    assert!(answers_health(&mut other).await?);

    // Once a session closes, its address gets a place again.
    sessions.remove(0).close().await?;
    let deadline = Instant::now() + PATIENCE;
    let mut again = loop {
        let mut tcp = connect_from(one, addr).await?;
        if answers_health(&mut tcp).await? {
            break tcp;
        }
        anyhow::ensure!(Instant::now() < deadline, "the closed session's place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(answers_health(&mut again).await?, "keep-alive: the connection serves on");

    // In all: 127.0.0.1 holds 3 and 127.0.0.2 one; a fifth comes in, a sixth does not,
    // whatever its address.
    let mut fifth = connect_from(two, addr).await?;
    assert!(answers_health(&mut fifth).await?);
    let mut sixth = connect_from(three, addr).await?;
    assert!(!answers_health(&mut sixth).await?, "a 6th connection with max_connections = 5");
    // The sessions still work.
    for session in &mut sessions {
        assert_eq!(session.request(ClientRequest::Ping).await?, Ok(ServerResponse::Pong));
    }
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_is_held_to_the_configured_message_rate() -> anyhow::Result<()> {
    // Far above the ~1,000 messages per second that a wait per message allows (timers
    // round each wait up to a millisecond): at 5,000 per second, 5,000 pings take a second.
    const RATE: u32 = 5_000;
    const PINGS: u32 = 5_000;
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| {
        c.limits.messages_per_second = RATE;
        c.limits.burst = 1;
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let started = Instant::now();
    for _ in 0..PINGS {
        alice.send_request(ClientRequest::Ping).await?;
    }
    for _ in 0..PINGS {
        match alice.next().await? {
            ServerMessage::Response { response: ServerResponse::Pong, .. } => {}
            other => anyhow::bail!("expected a pong, got {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sustained = f64::from(PINGS) / elapsed;
    // Only the upper bound here, which no machine's speed can break: the limiter holds the
    // connection to its rate. That it sustains the whole rate (no wait per message rounded
    // up to a timer tick) is checked on paused time by the limiter's unit test, since a
    // lower bound on wall-clock throughput fails on a busy machine.
    assert!(sustained <= f64::from(RATE) * 1.2, "not limited: {sustained:.0} messages/s");
    server.stop().await?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_root_serves_no_hidden_files_and_no_symlinks_out_of_itself() -> anyhow::Result<()> {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("secret.txt"), "outside secret")?;
    std::fs::write(outside.path().join("index.html"), "outside index")?;
    let web = tempfile::tempdir()?;
    let root = web.path();
    std::fs::write(root.join("index.html"), "<h1>concord</h1>")?;
    std::fs::write(root.join("app.js"), "console.log('hi')")?;
    std::fs::write(root.join(".env"), "hidden secret")?;
    std::fs::create_dir(root.join(".git"))?;
    std::fs::write(root.join(".git/index.html"), "hidden index")?;
    symlink(root.join("app.js"), root.join("alias.js"))?;
    symlink(outside.path().join("secret.txt"), root.join("escape.txt"))?;
    symlink(outside.path(), root.join("escape-dir"))?;
    symlink(root.join(".env"), root.join("visible-name"))?;
    let web_root = root.to_path_buf();
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), move |c| c.web_root = Some(web_root)).await?;
    let addr = server.addr();
    let get = |path: &'static str| async move {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    for (path, content) in
        [("/", "<h1>concord</h1>"), ("/app.js", "console.log"), ("/alias.js", "console.log")]
    {
        let response = get(path).await?;
        assert!(
            response.starts_with("HTTP/1.1 200") && response.contains(content),
            "{path}: {response}"
        );
    }
    for path in [
        "/.env",
        "/%2eenv",
        "/%2Egit",
        "/.git",
        "/.git/",
        "/escape.txt",
        "/escape-dir",
        "/escape-dir/",
        "/visible-name",
    ] {
        let response = get(path).await?;
        assert!(response.starts_with("HTTP/1.1 404"), "{path}: {response}");
        assert!(!response.contains("secret") && !response.contains("index"), "{path}: {response}");
    }
    server.stop().await?;
    Ok(())
}
