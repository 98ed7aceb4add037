//! Presence over a real server with real clients: followers get a user's current state and
//! each change; a client process killed with SIGKILL takes its user offline; state set
//! offline is published on reconnect; a follower that reconnects follows again.
//!
//! The killed client is this test binary run again (`presence_child`, which does nothing
//! unless `CONCORD_PRESENCE_CHILD` is set), so the process that dies is a real one.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use concord_client::{ClientError, ConnectionState, Events, UserId, UserPresence, state_value};
use serde_json::json;
use support::*;

fn user(id: &str) -> UserId {
    UserId(id.into())
}

/// The next presence event about `who` that `accept` accepts.
async fn presence_until(
    events: &mut Events<UserPresence>,
    who: &str,
    mut accept: impl FnMut(&UserPresence) -> bool,
) -> anyhow::Result<UserPresence> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await?;
        match event {
            Some(presence) if presence.user == user(who) && accept(&presence) => {
                return Ok(presence);
            }
            Some(_) => {}
            None => anyhow::bail!("the presence events ended"),
        }
    }
}

/// The child: connects as `carol`, publishes where she is, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_child() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("CONCORD_PRESENCE_CHILD") else { return Ok(()) };
    let (url, store) = spec.split_once('|').unwrap();
    let carol = domain(url, std::path::Path::new(store));
    carol.connect_with_jwt(token("carol")).await?;
    carol.presence().set_state("viewing", json!({ "page": 12 })).await?;
    println!("published");
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_process_takes_its_user_offline() -> anyhow::Result<()> {
    if std::env::var("CONCORD_PRESENCE_CHILD").is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let mut events = alice.presence().events();
    let now = alice.presence().follow(&[user("carol")]).await?;
    assert_eq!(now.len(), 1);
    assert!(!now[0].available && now[0].state.is_empty(), "{now:?}");

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "presence_child", "--nocapture", "--test-threads", "1"])
        .env(
            "CONCORD_PRESENCE_CHILD",
            format!("{}|{}", url(&server), dir.path().join("carol").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let published = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("published"))
    });
    assert!(tokio::task::spawn_blocking(move || published.join().unwrap()).await?);

    // Her state reached the follower.
    let seen = presence_until(&mut events, "carol", |p| p.state.contains_key("viewing")).await?;
    assert!(seen.available);
    assert_eq!(state_value(&seen, "viewing"), Some(json!({ "page": 12 })));

    // SIGKILL: no goodbye; the socket closes with the process.
    child.kill()?;
    child.wait()?;
    let gone = presence_until(&mut events, "carol", |p| !p.available).await?;
    assert!(gone.state.is_empty(), "{gone:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_set_offline_is_published_on_reconnect_and_followers_follow_again()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;

    let mut events = alice.presence().events();
    let now = alice.presence().follow(&[user("bob")]).await?;
    assert!(now[0].available);

    // Following needs the connection; publishing does not.
    bob.disconnect().await?;
    // The server notices the connection's end on its own time; alice hears of it.
    let away = presence_until(&mut events, "bob", |p| !p.available).await?;
    assert!(away.state.is_empty(), "{away:?}");
    assert!(matches!(bob.presence().follow(&[user("alice")]).await, Err(ClientError::Offline)));
    bob.presence().set_state("status", json!("away")).await?;
    bob.presence().set_state("typing", json!(false)).await?;
    bob.presence().remove_state(&["typing"]).await?;
    bob.connect_with_jwt(token("bob")).await?;
    let back = presence_until(&mut events, "bob", |p| !p.state.is_empty()).await?;
    assert!(back.available);
    assert_eq!(back.state.keys().collect::<Vec<_>>(), vec!["status"]);
    assert_eq!(state_value(&back, "status"), Some(json!("away")));

    // Changes online reach the follower, one by one.
    bob.presence().set_state("status", json!("here")).await?;
    let changed = presence_until(&mut events, "bob", |_| true).await?;
    assert_eq!(state_value(&changed, "status"), Some(json!("here")));
    bob.presence().clear_state().await?;
    let cleared = presence_until(&mut events, "bob", |_| true).await?;
    assert!(cleared.available && cleared.state.is_empty());

    // The follower loses its own connection; while it is away Bob's state changes; back,
    // it follows again by itself and hears what it missed.
    alice.disconnect().await?;
    bob.presence().set_state("status", json!("missed")).await?;
    alice.connect_with_jwt(token("alice")).await?;
    alice.wait_for(ConnectionState::Connected).await?;
    let missed = presence_until(&mut events, "bob", |p| p.state.contains_key("status")).await?;
    assert_eq!(state_value(&missed, "status"), Some(json!("missed")));

    // Unfollowed: no more events about Bob.
    alice.presence().unfollow(&[user("bob")]).await?;
    bob.presence().set_state("status", json!("unheard")).await?;
    bob.disconnect().await?;
    // A change alice still follows (her own) proves the stream is live past Bob's.
    alice.presence().follow(&[user("alice")]).await?;
    alice.presence().set_state("mark", json!(1)).await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await?.unwrap();
        assert_ne!(event.user, user("bob"), "an unfollowed user's change arrived: {event:?}");
        if state_value(&event, "mark") == Some(json!(1)) {
            return Ok(());
        }
    }
}
