//! Tokens over a real socket: the two kinds never pass for each other, `nbf` is honoured, an
//! anonymous user's reconnect token stays anonymous, and revoked reconnect tokens are refused.

mod support;

use std::time::Duration;

use concord_protocol::{Auth, ErrorCode, HandshakeResult, ReconnectToken, Session, UserId};
use concord_server::{RevocationList, RunningServer};
use concord_testkit::wire::WireClient;
use jsonwebtoken::{EncodingKey, Header};
use support::*;

/// Handshakes on a new connection; the session, or the rejection's code.
async fn handshake(
    server: &RunningServer,
    auth: Auth,
) -> anyhow::Result<Result<Session, ErrorCode>> {
    let mut client = WireClient::connect(&url(server)).await?;
    Ok(match client.handshake(auth).await? {
        HandshakeResult::Accepted(session) => Ok(session),
        HandshakeResult::Rejected(rejection) => Err(rejection.code),
    })
}

/// A server as `concord serve` runs by default: one secret signs client JWTs and reconnect
/// tokens, and no audience is required.
async fn one_secret_server(
    allow_anonymous: bool,
    dir: &std::path::Path,
) -> anyhow::Result<RunningServer> {
    start(dir, |config| {
        config.auth.reconnect_secret = SECRET.to_vec();
        config.auth.allow_anonymous = allow_anonymous;
        if let Some(jwt) = &mut config.auth.jwt {
            jwt.audience = None;
            jwt.leeway = Duration::from_secs(30);
        }
    })
    .await
}

support::on_each_store!(a_reconnect_token_is_never_a_client_jwt_even_with_one_secret);
async fn a_reconnect_token_is_never_a_client_jwt_even_with_one_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = one_secret_server(true, dir.path()).await?;
    let alice = handshake(&server, jwt("alice")).await?.expect("alice's JWT");
    let reconnect = alice.reconnect_token.clone();
    let back = handshake(&server, Auth::Reconnect(reconnect.clone())).await?.expect("reconnect");
    assert_eq!(back.user, alice.user);

    // Presented as a client JWT, the reconnect token is refused.
    let refused = handshake(&server, Auth::Jwt(reconnect.0.clone())).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    // A client JWT shaped like a reconnect token is no reconnect token.
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "mallory", "anon": false, "exp": now + 60, "aud": "concord-reconnect",
        "issued_ms": now * 1000, "concord_token": "reconnect",
    });
    let forged =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET))?;
    let refused = handshake(&server, Auth::Reconnect(ReconnectToken(forged.clone()))).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    // And a client JWT carrying the reconnect claim is refused as a JWT too.
    let refused = handshake(&server, Auth::Jwt(forged)).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(
    an_anonymous_user_comes_back_anonymous_until_anonymous_access_is_switched_off
);
async fn an_anonymous_user_comes_back_anonymous_until_anonymous_access_is_switched_off()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = one_secret_server(true, dir.path()).await?;
    let anonymous = Auth::Anonymous { display_name: Some("Ann".into()) };
    let first = handshake(&server, anonymous).await?.expect("anonymous access is on");
    assert!(first.user.anonymous);
    let back = handshake(&server, Auth::Reconnect(first.reconnect_token.clone())).await?;
    let back = back.expect("the reconnect token");
    assert_eq!(back.user, first.user, "the same anonymous user");
    assert!(back.user.anonymous);
    server.stop().await?;

    // The same server, restarted without anonymous access.
    let server = one_secret_server(false, dir.path()).await?;
    let refused = handshake(&server, Auth::Reconnect(back.reconnect_token.clone())).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::ANONYMOUS_DISABLED);
    let refused = handshake(&server, Auth::Jwt(back.reconnect_token.0.clone())).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED, "not as a named user");
    server.stop().await?;
    Ok(())
}

/// On the embedded store only: the JWT is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_jwt_is_refused_before_its_nbf() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = one_secret_server(false, dir.path()).await?;
    let token = |not_before_in: u64| {
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            serde_json::json!({ "sub": "alice", "exp": now + 3_600, "nbf": now + not_before_in });
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET))
    };
    let refused = handshake(&server, Auth::Jwt(token(3_600)?)).await?;
    assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    // Within the configured leeway (30 s), clock skew is forgiven.
    let session = handshake(&server, Auth::Jwt(token(5)?)).await?.expect("within the leeway");
    assert_eq!(session.user.id, UserId("alice".into()));
    server.stop().await?;
    Ok(())
}

support::on_each_store!(revoked_reconnect_tokens_are_refused_at_once);
async fn revoked_reconnect_tokens_are_refused_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let alice = handshake(&server, jwt("alice")).await?.expect("alice");
    let bob = handshake(&server, jwt("bob")).await?.expect("bob");
    // A reconnect token is re-issued at every handshake; all of alice's so far go.
    let alice_again = handshake(&server, Auth::Reconnect(alice.reconnect_token.clone())).await?;
    let alice_again = alice_again.expect("not revoked yet");

    // Revoked while the server runs, through the data directory's list.
    RevocationList::in_data_dir(dir.path()).revoke(&UserId("alice".into()))?;
    for token in [alice.reconnect_token, alice_again.reconnect_token] {
        let refused = handshake(&server, Auth::Reconnect(token)).await?;
        assert_eq!(refused.unwrap_err(), ErrorCode::AUTHENTICATION_FAILED);
    }
    let bob_again = handshake(&server, Auth::Reconnect(bob.reconnect_token)).await?;
    assert_eq!(bob_again.expect("bob is not revoked").user.id, UserId("bob".into()));

    // Alice logs in again with her JWT, and her new reconnect token works.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let fresh = handshake(&server, jwt("alice")).await?.expect("alice's JWT still works");
    let back = handshake(&server, Auth::Reconnect(fresh.reconnect_token)).await?;
    assert_eq!(back.expect("a token issued after the revocation").user.id, UserId("alice".into()));
    server.stop().await?;
    Ok(())
}
