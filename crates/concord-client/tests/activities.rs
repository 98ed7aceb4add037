//! Activities over a real server with real clients: joining lists who is there, state
//! changes reach the other participants, a client process killed with SIGKILL leaves every
//! activity it was in, and a client that reconnects joins again with its state (set while
//! offline too).
//!
//! The killed client is this test binary run again (`activity_child`, which does nothing
//! unless `CONCORD_ACTIVITY_CHILD` is set).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use concord_client::{ActivityChange, ActivityId, ClientError, Events};
use serde_json::json;
use support::*;

type ActivityEvents = Events<(ActivityId, ActivityChange)>;

/// The next change in an activity that `pick` accepts.
async fn next_change<T>(
    events: &mut ActivityEvents,
    mut pick: impl FnMut(&ActivityId, &ActivityChange) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await?;
        let Some((activity, change)) = event else { anyhow::bail!("the events ended") };
        if let Some(found) = pick(&activity, &change) {
            return Ok(found);
        }
    }
}

fn value(state: &BTreeMap<String, String>, key: &str) -> Option<serde_json::Value> {
    serde_json::from_str(state.get(key)?).ok()
}

/// The child: connects as `carol`, joins "viewing" page 12 with a cursor, says so, waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_child() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("CONCORD_ACTIVITY_CHILD") else { return Ok(()) };
    let (url, store) = spec.split_once('|').unwrap();
    let carol = domain(url, std::path::Path::new(store));
    carol.connect_with_jwt(token("carol")).await?;
    let state = BTreeMap::from([("cursor".to_owned(), json!(7))]);
    let page = carol.activities().join("viewing", "page 12", state).await?;
    page.set_state("cursor", json!(8)).await?;
    println!("joined");
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_process_leaves_its_activities() -> anyhow::Result<()> {
    if std::env::var("CONCORD_ACTIVITY_CHILD").is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let mut events = alice.activities().events();
    let page = alice.activities().join("viewing", "page 12", BTreeMap::new()).await?;
    assert_eq!(page.joined_with().len(), 1);

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "activity_child", "--nocapture", "--test-threads", "1"])
        .env(
            "CONCORD_ACTIVITY_CHILD",
            format!("{}|{}", url(&server), dir.path().join("carol").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let joined = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("joined"))
    });
    assert!(tokio::task::spawn_blocking(move || joined.join().unwrap()).await?);

    let carol = next_change(&mut events, |_, c| match c {
        ActivityChange::Joined(p) if p.user.0 == "carol" => Some(p.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(value(&carol.state, "cursor"), Some(json!(7)));
    let moved = next_change(&mut events, |_, c| match c {
        ActivityChange::StateChanged { session, user, state } if *session == carol.session => {
            Some((user.clone(), state.clone()))
        }
        _ => None,
    })
    .await?;
    assert_eq!(moved.0.0, "carol", "the event names the user");
    assert_eq!(value(&moved.1, "cursor"), Some(json!(8)));
    assert_eq!(page.participants().await?.len(), 2);

    child.kill()?;
    child.wait()?;
    let left = next_change(&mut events, |a, c| match c {
        ActivityChange::Left { session, user } if *session == carol.session => {
            Some((a.clone(), user.clone()))
        }
        _ => None,
    })
    .await?;
    assert_eq!(left, (page.id().clone(), carol.user));
    assert_eq!(page.participants().await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_joins_again_with_its_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let mut events = alice.activities().events();
    let page = alice.activities().join("viewing", "page 3", BTreeMap::new()).await?;
    let bobs = bob.activities().join("viewing", "page 3", BTreeMap::new()).await?;
    let first = next_change(&mut events, |_, c| match c {
        ActivityChange::Joined(p) if p.user.0 == "bob" => Some(p.session.clone()),
        _ => None,
    })
    .await?;

    // Offline, joining fails at once; state set on a joined activity is kept.
    bob.disconnect().await?;
    let left = next_change(&mut events, |_, c| match c {
        ActivityChange::Left { session, user } => Some((session.clone(), user.0.clone())),
        _ => None,
    })
    .await?;
    assert_eq!(left, (first.clone(), "bob".to_owned()));
    assert!(matches!(
        bob.activities().join("viewing", "page 4", BTreeMap::new()).await,
        Err(ClientError::Offline)
    ));
    bobs.set_state("cursor", json!(42)).await?;

    bob.connect_with_jwt(token("bob")).await?;
    let again = next_change(&mut events, |_, c| match c {
        ActivityChange::Joined(p) if p.user.0 == "bob" => Some(p.clone()),
        _ => None,
    })
    .await?;
    assert_ne!(again.session, first, "a new session");
    assert_eq!(value(&again.state, "cursor"), Some(json!(42)));
    assert_eq!(bobs.participants().await?.len(), 2);

    // Leaving is for good: not joined again after the next reconnection.
    bobs.clone().leave().await?;
    next_change(&mut events, |_, c| matches!(c, ActivityChange::Left { .. }).then_some(())).await?;
    bob.disconnect().await?;
    bob.connect_with_jwt(token("bob")).await?;
    page.set_state("mark", json!(1)).await?;
    assert!(matches!(bobs.participants().await, Err(ClientError::NotJoined(_))));
    let now = page.participants().await?;
    assert_eq!(now.len(), 1, "{now:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_cleared_state_disappears_for_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let mut events = alice.activities().events();
    let page = alice.activities().join("viewing", "page 5", BTreeMap::new()).await?;
    let state =
        BTreeMap::from([("cursor".to_owned(), json!(3)), ("tool".to_owned(), json!("pen"))]);
    let bobs = bob.activities().join("viewing", "page 5", state).await?;
    let session = next_change(&mut events, |_, c| match c {
        ActivityChange::Joined(p) if p.user.0 == "bob" => Some(p.session.clone()),
        _ => None,
    })
    .await?;
    let bobs_state = |c: &ActivityChange| match c {
        ActivityChange::StateChanged { session: s, user, state } if *s == session => {
            assert_eq!(user.0, "bob", "the event names the user");
            Some(state.clone())
        }
        _ => None,
    };
    let seen = |participants: Vec<concord_client::Participant>| {
        participants.into_iter().find(|p| p.session == session).map(|p| p.state)
    };

    bobs.remove_state(&["cursor"]).await?;
    let now = next_change(&mut events, |_, c| bobs_state(c)).await?;
    assert_eq!(now.keys().collect::<Vec<_>>(), ["tool"]);
    assert_eq!(value(&now, "tool"), Some(json!("pen")));
    assert_eq!(seen(page.participants().await?), Some(now));

    bobs.clear_state().await?;
    let now = next_change(&mut events, |_, c| bobs_state(c)).await?;
    assert!(now.is_empty(), "{now:?}");
    assert_eq!(seen(page.participants().await?), Some(BTreeMap::new()));
    Ok(())
}
