//! History end to end: a real server on loopback, two users editing a model, and
//! historical models that play it back — every state the clients saw, with its author and
//! time — and what may not be read.

mod support;

use concord_client::{
    ClientError, CollectionId, ErrorCode, HistoricalModel, ModelId, RealTimeModel, SessionId,
    Timestamp, UserId,
};
use concord_server::{CollectionConfig, RunningServer, Server, ServerConfig};
use serde_json::json;
use support::*;

/// A server keeping a checkpoint every `every` operations, with a collection `private`
/// nobody but a model's creator may read.
async fn server(dir: &std::path::Path, every: u64) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.snapshot_every = every;
    let mut private = CollectionConfig::default();
    private.world.read = false;
    private.world.write = false;
    private.world.remove = false;
    config.collections.insert(CollectionId::new("private").unwrap(), private);
    Ok(Server::spawn(config).await?)
}

fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    since.as_millis() as i64
}

/// What a client saw once a change was acknowledged, and who made it when.
struct Seen {
    value: serde_json::Value,
    author: Option<(SessionId, UserId)>,
    /// The change was made, and acknowledged, within this time.
    between: (i64, i64),
}

/// One change on `model`, different by `step`.
async fn change(model: &RealTimeModel, step: usize) -> anyhow::Result<concord_client::Change> {
    let root = model.root();
    Ok(match step % 4 {
        0 => root.get("title").await?.unwrap().as_string()?.insert(0, &step.to_string()).await?,
        1 => root.get("items").await?.unwrap().as_array()?.push(json!({ "n": step })).await?,
        2 => root.get("count").await?.unwrap().as_number()?.add(1.5).await?,
        _ => root.get("items").await?.unwrap().as_array()?.remove(0).await?,
    })
}

async fn at_version(model: &RealTimeModel, version: u64) -> anyhow::Result<()> {
    eventually("a client reaches the version", || async { Ok(model.version().await? == version) })
        .await
}

/// Checks that `history` shows what was seen at its version.
fn check(history: &HistoricalModel, seen: &[Seen]) {
    let version = history.version() as usize;
    let expected = &seen[version];
    assert_eq!(history.value(), expected.value, "the value at version {version}");
    match (&expected.author, history.operation()) {
        (None, None) => {}
        (Some((session, user)), Some(operation)) => {
            assert_eq!(operation.operation.version, version as u64);
            assert_eq!(&operation.operation.author, session, "the session of version {version}");
            assert_eq!(operation.user.as_ref(), Some(user), "the user of version {version}");
            let time = operation.operation.timestamp.0;
            let (from, to) = expected.between;
            assert!(
                (from..=to).contains(&time),
                "version {version} at {time}, not in {from}..={to}"
            );
            assert_eq!(history.modified_at(), operation.operation.timestamp);
        }
        (expected, got) => panic!(
            "version {version}: expected {expected:?}, got {got:?}",
            expected = expected.as_ref().map(|a| &a.0)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_shows_every_state_two_users_saw() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(&dir.path().join("server"), 5).await?;
    let alice = domain(&url(&server), &dir.path().join("alice"));
    let bob = domain(&url(&server), &dir.path().join("bob"));
    let alice_session = alice.connect_with_jwt(token("alice")).await?.session;
    let bob_session = bob.connect_with_jwt(token("bob")).await?.session;
    let model = id("story");
    create_confirmed(
        &alice,
        std::slice::from_ref(&model),
        json!({ "title": "", "items": [], "count": 0 }),
    )
    .await?;
    let a = alice.models().open(&model).await?;
    let b = bob.models().open(&model).await?;
    let mut seen = vec![Seen { value: a.value().await?, author: None, between: (0, 0) }];
    for step in 0..26 {
        let (editor, other, session, user) = if step % 2 == 0 {
            (&a, &b, &alice_session, "alice")
        } else {
            (&b, &a, &bob_session, "bob")
        };
        let from = now();
        let made = change(editor, step).await?;
        editor.acknowledged(made).await?;
        let to = now();
        let version = seen.len() as u64;
        assert_eq!(editor.version().await?, version);
        at_version(other, version).await?;
        let value = editor.value().await?;
        assert_eq!(other.value().await?, value, "both clients see version {version} alike");
        let author = Some((session.clone(), UserId(user.into())));
        seen.push(Seen { value, author, between: (from, to) });
    }
    let last = seen.len() as u64 - 1;

    // Opened at the newest version, by either user.
    let mut history = alice.models().history(&model).await?;
    assert_eq!((history.min_version(), history.max_version(), history.version()), (0, last, last));
    check(&history, &seen);
    let deltas = (0..26).filter(|step| step % 4 == 2).count();
    assert_eq!(history.root().get("count")?.unwrap().number()?, 1.5 * deltas as f64);
    let mut bobs = bob.models().history(&model).await?;
    bobs.play_to(3).await?;
    check(&bobs, &seen);

    // Every step forwards, then every step back.
    history.play_to(0).await?;
    check(&history, &seen);
    while history.version() < last {
        history.forward(1).await?;
        check(&history, &seen);
    }
    while history.version() > 0 {
        history.backward(1).await?;
        check(&history, &seen);
    }
    assert!(matches!(history.backward(1).await, Err(ClientError::History(_))));
    assert!(matches!(history.play_to(last + 1).await, Err(ClientError::History(_))));
    // Jumps both ways.
    for target in [17, 2, 26, 9, 10, 0, 25] {
        history.play_to(target).await?;
        check(&history, &seen);
    }

    // By time: the version current when version 13 was made is 13 (or a later one made
    // within the same millisecond).
    history.play_to(13).await?;
    let time = history.operation().unwrap().operation.timestamp;
    let at = history.version_at_time(time).await?;
    assert!(at >= 13 && seen[at as usize].between.0 <= time.0, "version {at} at {time:?}");
    history.play_to(0).await?;
    history.play_to_time(time).await?;
    assert_eq!(history.version(), at);
    check(&history, &seen);
    assert_eq!(history.version_at_time(Timestamp(0)).await?, 0);
    assert_eq!(history.version_at_time(Timestamp(i64::MAX)).await?, last);

    // The history grows with the model.
    let made = change(&a, 0).await?;
    a.acknowledged(made).await?;
    let newer = alice.models().history(&model).await?;
    assert_eq!(newer.max_version(), last + 1);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_needs_read_permission_and_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = server(&dir.path().join("server"), 5).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let secret = id("secret");
    let private = CollectionId::new("private").unwrap();
    alice.models().create_with_id(&secret, &private, json!({ "pin": "1234" })).await?;
    let a = alice.models().open(&secret).await?;
    let made = a.root().get("pin").await?.unwrap().as_string()?.insert(0, "0").await?;
    a.acknowledged(made).await?;
    assert_eq!(alice.models().history(&secret).await?.max_version(), 1);
    // Bob may not read it: refused as if it did not exist.
    match bob.models().history(&secret).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND),
        other => panic!("bob read alice's private history: {:?}", other.map(|h| h.value())),
    }
    match bob.models().history(&ModelId::new("never").unwrap()).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND),
        other => panic!("a history of nothing: {:?}", other.map(|h| h.value())),
    }
    // Offline there is no history.
    bob.disconnect().await?;
    assert!(matches!(bob.models().history(&secret).await, Err(ClientError::Engine(_))));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_plays_through_pages() -> anyhow::Result<()> {
    const EDITS: u64 = 700;
    let dir = tempfile::tempdir()?;
    let server = server(&dir.path().join("server"), 50).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let model = id("long");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "" })).await?;
    let a = alice.models().open(&model).await?;
    let text = a.root().get("text").await?.unwrap().as_string()?;
    for n in 0..EDITS {
        let letter = char::from(b'a' + (n % 26) as u8).to_string();
        let made = text.insert(n as usize, &letter).await?;
        a.acknowledged(made).await?;
    }
    assert_eq!(a.version().await?, EDITS);
    let expected = |version: u64| -> String {
        (0..version).map(|n| char::from(b'a' + (n % 26) as u8)).collect()
    };
    let shown =
        |history: &HistoricalModel| history.root().get("text").unwrap().unwrap().string().unwrap();

    // Longer than a page (256 operations) and than many checkpoint intervals.
    let mut history = alice.models().history(&model).await?;
    assert_eq!(shown(&history), expected(EDITS));
    history.play_to(0).await?;
    for version in 1..=EDITS {
        history.forward(1).await?;
        assert_eq!(history.version(), version);
        assert_eq!(history.root().get("text")?.unwrap().len()?, version as usize);
    }
    assert_eq!(shown(&history), expected(EDITS));
    for target in [350, 3, 699, 100, 101, 99, 0, 500, 450] {
        history.play_to(target).await?;
        assert_eq!(shown(&history), expected(target), "at {target}");
    }
    server.stop().await?;
    Ok(())
}
