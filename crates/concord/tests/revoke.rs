//! `concord revoke` against a running `concord serve`: the user's reconnect tokens are
//! refused at once, other users' are not, and a fresh login works. Also: the data directory
//! the server creates is private.

mod common;

use common::{concord, run, serve, token};
use concord_protocol::{Auth, ErrorCode, HandshakeResult, ReconnectToken, Session};
use concord_testkit::wire::WireClient;

async fn handshake(url: &str, auth: Auth) -> anyhow::Result<Result<Session, ErrorCode>> {
    let mut client = WireClient::connect(url).await?;
    Ok(match client.handshake(auth).await? {
        HandshakeResult::Accepted(session) => Ok(session),
        HandshakeResult::Rejected(rejection) => Err(rejection.code),
    })
}

async fn reconnect_token(url: &str, jwt: String) -> anyhow::Result<ReconnectToken> {
    let session = handshake(url, Auth::Jwt(jwt)).await?;
    Ok(session.map_err(|code| anyhow::anyhow!("refused: {code:?}"))?.reconnect_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_refuses_their_reconnect_tokens_while_the_server_runs() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let server = serve(&data_dir, &[])?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data_dir)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the data directory is private");
    }
    let url = server.url("acme", "docs");
    let alice = reconnect_token(&url, token(&data_dir, "alice")?).await?;
    let bob = reconnect_token(&url, token(&data_dir, "bob")?).await?;

    let output =
        run(concord().arg("revoke").arg("--data-dir").arg(&data_dir).args(["--user", "alice"]))?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("alice's reconnect tokens are revoked"), "{stdout}");

    let refused = handshake(&url, Auth::Reconnect(alice)).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    assert!(handshake(&url, Auth::Reconnect(bob)).await?.is_ok(), "bob was not revoked");
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let fresh = reconnect_token(&url, token(&data_dir, "alice")?).await?;
    assert!(handshake(&url, Auth::Reconnect(fresh)).await?.is_ok(), "a new login works");

    // Without a data directory there is nothing to revoke in.
    let output = run(concord()
        .arg("revoke")
        .arg("--data-dir")
        .arg(dir.path().join("nowhere"))
        .args(["--user", "alice"]))?;
    assert_eq!(output.status.code(), Some(1));
    drop(server);
    Ok(())
}
