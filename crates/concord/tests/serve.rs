//! `concord serve` and `concord token` as a user runs them: the server's secret, tokens,
//! signals, and a data directory two servers want at once.

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::{
    PATIENCE, ServeProcess, concord, connect, create_model, open_model, run, serve, text_document,
    token,
};
use concord_protocol::{Auth, HandshakeResult, ModelId, ServerPush};
use concord_testkit::wire::WireClient;

async fn handshake(url: &str, token: &str) -> anyhow::Result<HandshakeResult> {
    let mut client = WireClient::connect(url).await?;
    client.handshake(Auth::Jwt(token.to_owned())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_a_secret_that_signs_accepted_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");

    // Before any start there is no secret to sign with.
    let output =
        run(concord().arg("token").arg("--data-dir").arg(&data_dir).args(["--user", "a"]))?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("start `concord serve` once first, or pass --secret-file"), "{stderr}");

    let mut server = serve(&data_dir, &[])?;
    let secret_path = data_dir.join("secret");
    let secret = std::fs::read_to_string(&secret_path)?;
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    assert!(secret.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    server.wait_for_log("concord token --data-dir")?;

    // Beside the WebSocket endpoint, a health check for load balancers.
    {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(server.addr())?;
        http.set_read_timeout(Some(PATIENCE))?;
        http.write_all(b"GET /health HTTP/1.1\r\nHost: concord\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        http.read_to_string(&mut response)?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok"), "{response}");
    }

    let url = server.url("acme", "docs");
    let alice = token(&data_dir, "alice")?;
    match handshake(&url, &alice).await? {
        HandshakeResult::Accepted(session) => assert_eq!(session.user.id.0, "alice"),
        rejected => panic!("the server refused its own token: {rejected:?}"),
    }

    // A token signed with another secret is refused.
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n")?;
    let output =
        run(concord().arg("token").arg("--secret-file").arg(&other).args(["--user", "mallory"]))?;
    assert!(output.status.success());
    let forged = String::from_utf8(output.stdout)?.trim().to_owned();
    assert!(matches!(handshake(&url, &forged).await?, HandshakeResult::Rejected(_)));
    // So is an anonymous handshake, unless allowed.
    let mut client = WireClient::connect(&url).await?;
    let anonymous = Auth::Anonymous { display_name: None };
    assert!(matches!(client.handshake(anonymous).await?, HandshakeResult::Rejected(_)));

    server.signal("TERM")?;
    assert_eq!(server.wait(PATIENCE)?.and_then(|s| s.code()), Some(0));

    // A second start reuses the secret: the same token is still good.
    let server = serve(&data_dir, &[])?;
    assert_eq!(std::fs::read_to_string(&secret_path)?, secret);
    assert!(!server.wait_for_log("concord ready")?.contains("created the server secret"));
    let url = server.url("acme", "docs");
    assert!(matches!(handshake(&url, &alice).await?, HandshakeResult::Accepted(_)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_secret_signs_client_tokens_and_the_data_dir_keeps_its_own()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let jwt_secret = dir.path().join("jwt-secret");
    std::fs::write(&jwt_secret, "a secret shared with the application's login service\n")?;
    let file = jwt_secret.to_str().unwrap();
    let server = serve(&data_dir, &["--jwt-secret-file", file, "--jwt-audience", "app"])?;
    // Reconnect tokens are still signed with the data directory's own secret.
    assert!(data_dir.join("secret").exists());
    let url = server.url("acme", "docs");

    let mint = |args: &[&str]| -> anyhow::Result<String> {
        let output = run(concord().arg("token").args(["--user", "bob"]).args(args))?;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    };
    let good = mint(&["--secret-file", file, "--audience", "app"])?;
    let (client, session) = WireClient::connect_as(&url, Auth::Jwt(good)).await?;
    assert_eq!(session.user.id.0, "bob");
    client.close().await?;
    // The wrong audience, or the data directory's secret, are refused.
    let no_audience = mint(&["--secret-file", file])?;
    assert!(matches!(handshake(&url, &no_audience).await?, HandshakeResult::Rejected(_)));
    let data_dir_token = mint(&["--data-dir", data_dir.to_str().unwrap(), "--audience", "app"])?;
    assert!(matches!(handshake(&url, &data_dir_token).await?, HandshakeResult::Rejected(_)));
    // The reconnect token a handshake returns works on its own.
    let (_client, reconnected) =
        WireClient::connect_as(&url, Auth::Reconnect(session.reconnect_token)).await?;
    assert_eq!(reconnected.user.id.0, "bob");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_stop_the_server_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for signal in ["TERM", "INT"] {
        let mut server = serve(dir.path(), &[])?;
        let mut client = connect(&server.url("acme", "docs"), &token(dir.path(), "alice")?).await?;
        let started = Instant::now();
        server.signal(signal)?;
        let status = server.wait(PATIENCE)?;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "SIG{signal}: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(server.log().contains("concord stopped"), "{}", server.log());
        // The connected client was told, or at least disconnected.
        let told =
            client.push(|p| matches!(p, ServerPush::SessionClosing { .. }).then_some(())).await;
        if told.is_ok() {
            client.closed().await?;
        }
    }
    Ok(())
}

#[test]
fn a_second_server_on_the_same_data_dir_fails_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = serve(dir.path(), &[])?;
    let output =
        run(concord().args(["serve", "--bind", "127.0.0.1:0", "--data-dir"]).arg(dir.path()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "it must not claim to be ready");
    assert!(stderr.contains("concord: error:"), "{stderr}");
    assert!(stderr.contains("another process"), "{stderr}");
    Ok(())
}

#[test]
fn postgres_unreachable_at_start_fails_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("postgres://concord@127.0.0.1:{port}/concord");
    let output = run(concord()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--store", &url]))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "it must not claim to be ready");
    let expected = format!("cannot reach PostgreSQL at 127.0.0.1:{port}/concord");
    assert!(stderr.contains(&expected), "{stderr}");
    Ok(())
}

#[test]
fn a_bad_key_file_fails_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("public.pem");
    std::fs::write(&pem, "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")?;
    let missing = dir.path().join("missing-secret");
    let empty = dir.path().join("empty-secret");
    std::fs::write(&empty, "\n")?;
    let cases = [
        ("--jwt-rs256-public-key", &pem, "key"),
        ("--jwt-secret-file", &missing, "cannot read the secret file"),
        ("--jwt-secret-file", &empty, "is empty"),
    ];
    for (flag, path, expected) in cases {
        let output = run(concord()
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg(flag)
            .arg(path))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag}: {stderr}");
        assert!(output.stdout.is_empty());
        assert!(stderr.contains("concord: error:") && stderr.contains(expected), "{stderr}");
    }
    Ok(())
}

/// A throwaway RSA public key (its private half was discarded).
const RS256_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxXawL9YUjUaW4N9asDHc
sewevlRWTo/SjkmrXeI28GGRJzFLJ5ljzaa9RrIqUqdLl0U407YPjYwGoTTebfZz
nFOTLpkySikKIC7y/zFX2zMEVvrL35u/kBUDvYVegROh4I7s1ccJM7kJ8PQwZCNN
AKV/wDjChIPts13Ua6gJnm5I5kN75nPNDgApl+CEGuS28OLA7ePhqftgwZVTeZLL
5GxZoGub/jaWqf4XxZN6WoCfzw2Cc3Y9FgoBtcuIisrgkMsjGKHDazfVfbcPPgP0
Y0cbIk/Su84mmWfo4P7uBiJGFnvfEDnc5oN4RqKOi5vXUrl5ear6XVTcFkBx7AvO
uwIDAQAB
-----END PUBLIC KEY-----
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_rs256_key_hs256_tokens_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let pem = dir.path().join("public.pem");
    std::fs::write(&pem, RS256_PUBLIC_KEY)?;
    let config = dir.path().join("concord.toml");
    std::fs::write(&config, "jwt_rs256_public_key = \"public.pem\"\ndata_dir = \"data\"\n")?;
    let server =
        ServeProcess::start_with_args(common::BIN, [OsStr::new("--config"), config.as_os_str()])?;
    server.wait_for_log("RS256")?;
    // The data directory still gets its secret, for reconnect tokens; it signs no client JWT.
    let hs256 = token(&data_dir, "alice")?;
    assert!(matches!(
        handshake(&server.url("a", "b"), &hs256).await?,
        HandshakeResult::Rejected(_)
    ));
    // `concord token` reading the same configuration says why it cannot help.
    let output = run(concord().args(["token", "--user", "alice", "--config"]).arg(&config))?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RS256"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarts_on_its_address_and_data_and_stops_cleanly() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut server = serve(dir.path(), &[])?;
    let addr = server.addr();
    let alice = token(dir.path(), "alice")?;
    let model = ModelId::new("kept")?;
    let mut client = connect(&server.url("acme", "docs"), &alice).await?;
    create_model(&mut client, &model, text_document(1)).await?;

    server.kill()?;
    assert!(client.closed().await.is_ok(), "the killed server's connection stays open");
    server.restart()?;
    assert_eq!(server.addr(), addr);
    assert!(!server.log().contains("concord stopped"), "the log starts afresh");
    let mut client = connect(&server.url("acme", "docs"), &alice).await?;
    assert_eq!(open_model(&mut client, &model).await?.snapshot.version, 0);

    // `stop` is SIGTERM and a clean exit, after which the whole log is there.
    server.stop()?;
    assert!(server.log().contains("concord stopped"), "{}", server.log());
    Ok(())
}
