//! Identities and collaborators end to end: a real server on loopback, clients with redb
//! stores. Names and emails come from the tokens' claims; emails show only to their own
//! user and to the domain's administrators; the store keeps what a client saw, for offline.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use concord_client::{Domain, ModelEvent, RealTimeModel, UserId};
use concord_server::{RunningServer, Server, ServerConfig, mint_identity_token};
use serde_json::json;
use support::*;

fn user(id: &str) -> UserId {
    UserId(id.into())
}

async fn start_with_admin(dir: &std::path::Path, admin: &str) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::development(dir, SECRET);
    config.admins = BTreeSet::from([user(admin)]);
    Ok(Server::spawn(config).await?)
}

/// `id`'s domain, connected with a token naming them and their email.
async fn connect_named(
    server: &RunningServer,
    dir: &std::path::Path,
    id: &str,
    name: &str,
) -> anyhow::Result<Domain> {
    let email = format!("{id}@example.org");
    let token =
        mint_identity_token(SECRET, id, Some(name), Some(&email), Duration::from_secs(3600))?;
    let domain = domain(&url(server), &dir.join(id));
    domain.connect_with_jwt(token).await?;
    Ok(domain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_looked_up_and_searched_with_emails_only_for_themselves_and_admins()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_with_admin(&dir.path().join("server"), "root").await?;
    let alice = connect_named(&server, dir.path(), "alice", "Alice Liddell").await?;
    let _albert = connect_named(&server, dir.path(), "albert", "albert Einstein").await?;
    let bob = connect_named(&server, dir.path(), "bob", "Bob").await?;
    let root = connect_named(&server, dir.path(), "root", "Root").await?;

    // Bob sees alice's name, not her email; alice and the admin see it.
    let seen_by_bob = bob.identity().user(&user("alice")).await?.expect("alice is known");
    assert_eq!(seen_by_bob.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(seen_by_bob.email, None);
    let herself = alice.identity().user(&user("alice")).await?.unwrap();
    assert_eq!(herself.email.as_deref(), Some("alice@example.org"));
    let by_admin = root.identity().user(&user("alice")).await?.unwrap();
    assert_eq!(by_admin.email.as_deref(), Some("alice@example.org"));

    // Several at once: the known ones, by id.
    let found = bob.identity().users(&[user("bob"), user("nobody"), user("alice")]).await?;
    let ids: Vec<&str> = found.iter().map(|i| i.user.0.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert_eq!(found[1].email.as_deref(), Some("bob@example.org"), "his own");
    assert!(bob.identity().user(&user("nobody")).await?.is_none());

    // Search by name prefix, ignoring case.
    let found = bob.identity().search("AL").await?;
    let ids: Vec<&str> = found.iter().map(|i| i.user.0.as_str()).collect();
    assert_eq!(ids, ["albert", "alice"]);
    assert!(found.iter().all(|i| i.email.is_none()));
    assert_eq!(bob.identity().search_limited("al", 1).await?.len(), 1);

    // Offline, bob's store answers with what he saw.
    bob.disconnect().await?;
    let cached = bob.identity().user(&user("alice")).await?.expect("cached");
    assert_eq!(cached, seen_by_bob);
    let found = bob.identity().search("ali").await?;
    assert_eq!(found.iter().map(|i| i.user.0.as_str()).collect::<Vec<_>>(), ["alice"]);
    assert!(bob.identity().user(&user("root")).await?.is_none(), "never seen");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_cache_survives_a_restart_of_the_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let _alice = connect_named(&server, dir.path(), "alice", "Alice").await?;
    let bob = connect_named(&server, dir.path(), "bob", "Bob").await?;
    assert!(bob.identity().user(&user("alice")).await?.is_some());
    bob.close().await?;
    drop(bob);
    let address = url(&server);
    server.stop().await?;
    // A new domain on the same store (same server and user), the server gone.
    let offline = domain(&address, &dir.path().join("bob"));
    offline.initialize_offline("bob").await?;
    let cached = offline.identity().user(&user("alice")).await?.expect("kept in the store");
    assert_eq!(cached.display_name.as_deref(), Some("Alice"));
    Ok(())
}

async fn session(model: &RealTimeModel) -> anyhow::Result<concord_client::SessionId> {
    model.session_id().await?.ok_or_else(|| anyhow::anyhow!("no session"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collaborators_tell_since_when_and_departed_authors_keep_their_user() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let model = id("minutes");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "" })).await?;
    let a = alice.models().open(&model).await?;
    let mut a_events = a.events();
    let mut a_text_events = a.root().get("text").await?.unwrap().as_string()?.events();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let b = bob.models().open(&model).await?;
    let b_session = session(&b).await?;
    eventually("alice lists bob", || async { Ok(a.collaborators().await?.len() == 1) }).await?;
    let listed = a.collaborators().await?;
    assert_eq!(listed[0].user, user("bob"));
    // Server time, in milliseconds: not before bob opened (with a second for clock skew in
    // the same machine's clocks, which are one clock here).
    let since = listed[0].since.0;
    assert!(since + 1_000 >= before.as_millis() as i64, "{since} vs {before:?}");
    eventually("bob lists alice", || async { Ok(b.collaborators().await?.len() == 1) }).await?;
    let b_listed = b.collaborators().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let alice_since = b_listed[0].since.0;
    assert!(alice_since > 0 && alice_since <= now.as_millis() as i64 + 1_000, "{alice_since}");

    // Bob types, then leaves; alice hears him leave by name.
    let b_text = b.root().get("text").await?.unwrap().as_string()?;
    b_text.insert(0, "bye").await?;
    drop(b_text);
    // The string's own events name his session and user too.
    let change = tokio::time::timeout(Duration::from_secs(20), a_text_events.next()).await?;
    let change = change.ok_or_else(|| anyhow::anyhow!("element events ended"))?;
    assert_eq!((change.author, change.user), (Some(b_session.clone()), Some(user("bob"))));
    b.close();
    let mut closed = None;
    while closed.is_none() {
        match tokio::time::timeout(Duration::from_secs(20), a_events.next()).await? {
            Some(ModelEvent::CollaboratorClosed { session, user }) => {
                closed = Some((session, user))
            }
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    assert_eq!(closed, Some((b_session.clone(), user("bob"))));

    // Alice goes offline; bob opens the model again on the same session and types while
    // she is away; her resync replays it and names him, although his session does not
    // have the model open any more by then.
    alice.disconnect().await?;
    let b = bob.models().open(&model).await?;
    let b_text = b.root().get("text").await?.unwrap().as_string()?;
    b_text.insert(0, "back ").await?;
    b.acknowledged(b_text.insert(0, "!").await?).await?;
    drop(b_text);
    b.close();
    // Bob's session closed the model before alice reconnects: only the engine's memory of
    // its user can name him.
    alice.connect_with_jwt(token("alice")).await?;
    let mut replayed_user = None;
    while replayed_user.is_none() {
        match tokio::time::timeout(Duration::from_secs(20), a_events.next()).await? {
            Some(ModelEvent::Changed { author: Some(author), user, .. }) if author == b_session => {
                replayed_user = Some(user)
            }
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    assert_eq!(replayed_user, Some(Some(user("bob"))));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reference_is_named_in_its_event() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::development(dir.path().join("server"), SECRET);
    // One shared reference per session: the second is refused by the server.
    config.limits.max_shared_references = 1;
    let server = Server::spawn(config).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let model = id("refusals");
    alice.models().create_with_id(&model, &notes(), json!({ "text": "abc" })).await?;
    let a = alice.models().open(&model).await?;
    let mut events = a.events();
    let text = a.root().get("text").await?.unwrap().as_string()?;
    text.index_reference("first").set_index(1).await?;
    text.index_reference("second").set_index(2).await?;
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(ModelEvent::ReferenceRefused { reference, error }) => break (reference, error),
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    };
    assert_eq!(refused.0.key, "second");
    assert_eq!(refused.1.code, concord_client::ErrorCode::OVERLOADED);
    server.stop().await?;
    Ok(())
}

/// Waits for `count` remote changes on `events` and returns the user each named.
async fn remote_change_users(
    events: &mut concord_client::Events<ModelEvent>,
    count: usize,
) -> anyhow::Result<Vec<Option<UserId>>> {
    let mut users = Vec::new();
    while users.len() < count {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(ModelEvent::Changed { author: Some(_), user, .. }) => users.push(user),
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    Ok(users)
}

/// `user`, in a fresh domain (a session nobody has seen), types `edits` characters into
/// `model`'s text, waits until the server has them all, and leaves.
async fn type_as_stranger(
    server: &RunningServer,
    dir: &std::path::Path,
    user: &str,
    model: &concord_client::ModelId,
    edits: usize,
) -> anyhow::Result<()> {
    let domain = connected(server, &dir.join(format!("{user}-stranger")), user).await?;
    let opened = domain.models().open(model).await?;
    let text = opened.root().get("text").await?.unwrap().as_string()?;
    let mut last = None;
    for _ in 0..edits {
        last = Some(text.insert(0, "x").await?);
    }
    opened.acknowledged(last.expect("at least one edit")).await?;
    drop(text);
    opened.close();
    domain.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_replayed_from_sessions_never_seen_name_their_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::development(dir.path().join("server"), SECRET);
    // A small window, so that a longer absence is replayed from the store.
    config.history_in_memory = 4;
    let server = Server::spawn(config.clone()).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let model = id("journal");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "" })).await?;
    let a = alice.models().open(&model).await?;
    let mut a_events = a.events();

    // Alice is offline while a user she never saw edits: a short absence is replayed from
    // the server's memory, a long one (past its window) from the store.
    for (user, edits) in [("carol", 3), ("dan", 12)] {
        alice.disconnect().await?;
        type_as_stranger(&server, dir.path(), user, &model, edits).await?;
        alice.connect_with_jwt(token("alice")).await?;
        let users = remote_change_users(&mut a_events, edits).await?;
        assert_eq!(users, vec![Some(self::user(user)); edits], "replayed edits of {user}");
    }

    // After a restart the server loads the model with its operations' users.
    alice.disconnect().await?;
    type_as_stranger(&server, dir.path(), "erin", &model, 2).await?;
    let addr = server.addr();
    server.stop().await?;
    config.bind = addr;
    let server = Server::spawn(config).await?;
    alice.connect_with_jwt(token("alice")).await?;
    let users = remote_change_users(&mut a_events, 2).await?;
    assert_eq!(users, vec![Some(user("erin")); 2], "replayed after a restart");
    let text = a.root().get("text").await?.unwrap().as_string()?;
    eventually("alice has every edit", || async { Ok(text.value().await?.len() == 17) }).await?;
    server.stop().await?;
    Ok(())
}

/// Changes pushed by a background sync come from a session that never opens the model (no
/// `CollaboratorOpened` names it): live, they still name their user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_operations_synced_in_the_background_name_their_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::development(dir.path().join("server"), SECRET);
    let server = Server::spawn(config).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let model = id("ledger");
    create_confirmed(&alice, std::slice::from_ref(&model), json!({ "text": "" })).await?;
    let a = alice.models().open(&model).await?;
    let mut a_events = a.events();

    // Frank has the model and edits it offline; then his app restarts and reconnects without
    // opening it: a new session whose only business with the model is syncing those edits.
    let frank_dir = dir.path().join("frank");
    let frank = connected(&server, &frank_dir, "frank").await?;
    let opened = frank.models().open(&model).await?;
    frank.disconnect().await?;
    let text = opened.root().get("text").await?.unwrap().as_string()?;
    let mut last = None;
    for _ in 0..3 {
        last = Some(text.insert(0, "f").await?);
    }
    opened.stored(last.expect("three edits")).await?;
    drop(text);
    opened.close();
    frank.close().await?;
    let frank = connected(&server, &frank_dir, "frank").await?;

    let users = remote_change_users(&mut a_events, 3).await?;
    assert_eq!(users, vec![Some(user("frank")); 3], "edits synced in the background");
    frank.close().await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_survive_a_restart_of_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server");
    let server = start_with_admin(&server_dir, "root").await?;
    let alice = connect_named(&server, dir.path(), "alice", "Alice Liddell").await?;
    // A reconnect token has no email: the one learned before is kept, and stored.
    alice.disconnect().await?;
    alice.connect_with_jwt(token("alice")).await?;
    alice.close().await?;
    let addr = server.addr();
    server.stop().await?;

    let mut config = ServerConfig::development(&server_dir, SECRET);
    config.admins = BTreeSet::from([user("root")]);
    config.bind = addr;
    let server = Server::spawn(config).await?;
    // Alice has not come back; bob and the admin still find her.
    let bob = connect_named(&server, &dir.path().join("again"), "bob", "Bob").await?;
    let found = bob.identity().user(&user("alice")).await?.expect("alice is known");
    assert_eq!(found.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(found.email, None, "not bob's to see");
    let by_name = bob.identity().search("alice").await?;
    assert_eq!(by_name.iter().map(|i| i.user.0.as_str()).collect::<Vec<_>>(), ["alice"]);
    let root = connect_named(&server, &dir.path().join("again"), "root", "Root").await?;
    let by_admin = root.identity().user(&user("alice")).await?.expect("alice is known");
    assert_eq!(by_admin.email.as_deref(), Some("alice@example.org"));
    server.stop().await?;
    Ok(())
}
