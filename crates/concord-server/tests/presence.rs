//! Presence over the wire: followers hear a user's state and availability, each domain has
//! its own, what one session may make the server hold is bounded, and a session that stops
//! sending (no pings) is ended — taking its user offline.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use concord_protocol::{
    ClientRequest, ErrorCode, PresenceRequest, ServerPush, ServerResponse, UserId, UserPresence,
};
use concord_server::PresenceLimits;
use concord_testkit::wire::WireClient;
use support::*;

fn presence(request: PresenceRequest) -> ClientRequest {
    ClientRequest::Presence(request)
}

fn set(pairs: &[(&str, &str)]) -> ClientRequest {
    let state = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    presence(PresenceRequest::SetState { state })
}

fn follow(users: &[&str]) -> ClientRequest {
    presence(PresenceRequest::Subscribe {
        users: users.iter().map(|u| UserId((*u).into())).collect(),
    })
}

async fn next_presence(client: &mut WireClient, who: &str) -> anyhow::Result<UserPresence> {
    let who = UserId(who.into());
    client
        .push(|p| match p {
            ServerPush::Presence(presence) if presence.user == who => Some(presence.clone()),
            _ => None,
        })
        .await
}

support::on_each_store!(followers_hear_state_and_availability_within_their_domain);
async fn followers_hear_state_and_availability_within_their_domain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    let mut bob = connect(&server, "bob").await?;
    assert_eq!(bob.request(set(&[("page", "12")])).await??, ServerResponse::Done);

    let Ok(ServerResponse::Presence(now)) = alice.request(follow(&["bob", "carol"])).await? else {
        anyhow::bail!("no presence answer");
    };
    assert_eq!(now.len(), 2);
    assert!(now[0].available && now[0].state == BTreeMap::from([("page".into(), "12".into())]));
    assert!(!now[1].available);

    // The same user in another domain is someone else's presence.
    let (mut elsewhere, _) =
        WireClient::connect_as(&server.url("test", "other"), jwt("bob")).await?;
    elsewhere.request(set(&[("page", "99")])).await??;
    bob.request(set(&[("page", "13")])).await??;
    let changed = next_presence(&mut alice, "bob").await?;
    assert_eq!(changed.state.get("page").map(String::as_str), Some("13"));

    // Carol arrives; Bob leaves, and his state goes with him.
    let carol = connect(&server, "carol").await?;
    assert!(next_presence(&mut alice, "carol").await?.available);
    bob.close().await?;
    let gone = next_presence(&mut alice, "bob").await?;
    assert!(!gone.available && gone.state.is_empty());
    drop((carol, elsewhere));
    Ok(())
}

support::on_each_store!(what_one_session_may_make_the_server_hold_is_bounded);
async fn what_one_session_may_make_the_server_hold_is_bounded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = PresenceLimits { max_state_bytes: 64, max_followed: 3, max_user_id_bytes: 32 };
    let server = start(dir.path(), |config| config.presence = limits).await?;
    let mut alice = connect(&server, "alice").await?;
    let big = format!("\"{}\"", "x".repeat(64));
    let refused = |answer: Result<ServerResponse, concord_protocol::ErrorReply>| match answer {
        Err(error) => error.code,
        Ok(response) => panic!("accepted: {response:?}"),
    };
    assert_eq!(refused(alice.request(set(&[("k", &big)])).await?), ErrorCode::OVERLOADED);
    assert_eq!(
        refused(alice.request(set(&[("k", "{not json")])).await?),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(refused(alice.request(follow(&["a", "b", "c", "d"])).await?), ErrorCode::OVERLOADED);
    let long = "u".repeat(33);
    assert_eq!(refused(alice.request(follow(&[&long])).await?), ErrorCode::INVALID_ARGUMENT);
    alice.request(follow(&["a", "b", "c"])).await??;
    assert_eq!(refused(alice.request(follow(&["d"])).await?), ErrorCode::OVERLOADED);
    let unfollow = presence(PresenceRequest::Unsubscribe { users: vec![UserId("a".into())] });
    alice.request(unfollow).await??;
    alice.request(follow(&["d"])).await??;
    Ok(())
}

/// On the embedded store only: the silence timeout is the connection's, not the store's.
#[tokio::test]
async fn a_session_that_stops_sending_is_ended_and_its_user_goes_offline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server =
        start(dir.path(), |config| config.silence_timeout = Duration::from_millis(1500)).await?;
    let mut bob = connect(&server, "bob").await?;
    bob.request(set(&[("typing", "true")])).await??;
    // Bob sends nothing more from here; Alice follows him well after his last message, so
    // her own silence ends later than his.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut alice = connect(&server, "alice").await?;
    let Ok(ServerResponse::Presence(now)) = alice.request(follow(&["bob"])).await? else {
        anyhow::bail!("no presence answer");
    };
    assert!(now[0].available);
    let gone = next_presence(&mut alice, "bob").await?;
    assert!(!gone.available && gone.state.is_empty());
    let closed = bob.closed().await?;
    assert!(closed.reason.contains("stopped answering"), "{closed:?}");
    Ok(())
}
