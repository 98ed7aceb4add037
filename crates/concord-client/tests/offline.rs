//! The client end to end: a real server on loopback, clients with redb stores, working
//! online, offline, and across restarts of either side.

mod support;

use std::time::Duration;

use concord_client::{ClientError, ConnectionState, DomainEvent, ModelEvent};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_see_each_others_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let model = id("shopping");
    alice.models().create_with_id(&model, &notes(), json!({ "items": [], "title": "" })).await?;
    let a = alice.models().open(&model).await?;
    let items = a.root().get("items").await?.unwrap().as_array()?;
    items.push(json!("milk")).await?;
    let change = items.push(json!("eggs")).await?;
    a.acknowledged(change).await?;

    let b = bob.models().open(&model).await?;
    let mut b_events = b.events();
    assert_eq!(b.value().await?, json!({ "items": ["milk", "eggs"], "title": "" }));
    let title = b.root().get("title").await?.unwrap().as_string()?;
    let change = title.insert(0, "Groceries").await?;
    b.acknowledged(change).await?;
    eventually("alice sees bob's title", || async {
        Ok(a.value().await?["title"] == json!("Groceries"))
    })
    .await?;
    // Bob heard of alice's change only as remote events with an author; his own had none.
    items.remove(0).await?;
    let remote = loop {
        match tokio::time::timeout(Duration::from_secs(20), b_events.next()).await? {
            Some(ModelEvent::Changed { author: Some(author), .. }) => break author,
            Some(_) => continue,
            None => anyhow::bail!("events ended"),
        }
    };
    assert!(!remote.0.is_empty());

    // Whole values: an array, then the root object, each replaced in one change.
    let b_items = b.root().get("items").await?.unwrap().as_array()?;
    let change = b_items.set_value(vec![json!("tea"), json!({ "n": 1.0 })]).await?;
    b.acknowledged(change).await?;
    // Numbers are f64 in the model.
    eventually("alice sees the new array", || async {
        Ok(a.value().await?["items"] == json!(["tea", { "n": 1.0 }]))
    })
    .await?;
    let whole = json!({ "title": "Set", "items": ["x"] });
    let change = b.root().set_value(whole.as_object().unwrap().clone()).await?;
    b.acknowledged(change).await?;
    eventually("alice sees the new root", || async { Ok(a.value().await? == whole) }).await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_creations_and_deletions_sync_on_reconnect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let (shared, doomed) = (id("shared"), id("doomed"));
    alice.models().create_with_id(&shared, &notes(), json!({ "text": "hello" })).await?;
    create_confirmed(&alice, std::slice::from_ref(&doomed), json!({})).await?;
    // Bob downloads both, then goes offline.
    bob.models().subscribe_offline(&[shared.clone(), doomed.clone()]).await?;
    let b_shared = bob.models().open(&shared).await?;
    drop(bob.models().open(&doomed).await?);
    bob.disconnect().await?;
    assert_eq!(bob.state(), ConnectionState::Disconnected);

    // Offline: edit, create, delete.
    let text = b_shared.root().get("text").await?.unwrap().as_string()?;
    let bobs_edit = text.insert(5, " from bob").await?;
    b_shared.stored(bobs_edit).await?;
    let created = bob.models().create(&notes(), json!({ "made": "offline" })).await?;
    bob.models().remove(&doomed).await?;
    let stored = bob.models().stored_models().await?;
    assert!(stored.iter().any(|m| m.id == created && m.created_locally));
    assert!(stored.iter().any(|m| m.id == doomed && m.deleted_locally));
    assert!(stored.iter().any(|m| m.id == shared && m.has_pending_changes));

    // Meanwhile alice edits the same string.
    let a_shared = alice.models().open(&shared).await?;
    let a_text = a_shared.root().get("text").await?.unwrap().as_string()?;
    let alices_edit = a_text.insert(0, "Oh, ").await?;
    a_shared.acknowledged(alices_edit).await?;

    let mut events = bob.events();
    bob.connect_with_jwt(token("bob")).await?;
    b_shared.acknowledged(bobs_edit).await?;
    let expected = json!({ "text": "Oh, hello from bob" });
    eventually("both see both edits", || async {
        Ok(b_shared.value().await? == expected && a_shared.value().await? == expected)
    })
    .await?;
    let (mut seen_created, mut seen_deleted) = (false, false);
    while !(seen_created && seen_deleted) {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(DomainEvent::Created { model }) if model == created => seen_created = true,
            Some(DomainEvent::Deleted { model }) if model == doomed => seen_deleted = true,
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    // Alice sees the creation and the deletion.
    let made = alice.models().open(&created).await?;
    assert_eq!(made.value().await?, json!({ "made": "offline" }));
    match alice.models().open(&doomed).await {
        Ok(_) => {
            // Alice had it in memory earlier; the server has it no more.
            let fresh = domain(&url(&server), &dir.path().join("carol"));
            fresh.connect_with_jwt(token("carol")).await?;
            let error = fresh.models().open(&doomed).await.unwrap_err();
            assert!(matches!(error, ClientError::Server(_)), "{error:?}");
        }
        Err(error) => assert!(matches!(error, ClientError::Server(_)), "{error:?}"),
    }
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_ones_unconfirmed_creation_leaves_another_clients_model_of_that_id()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    bob.disconnect().await?;
    // Offline, bob creates "doc" and deletes it again; meanwhile alice creates hers.
    let doc = id("doc");
    bob.models().create_with_id(&doc, &notes(), json!({ "by": "bob" })).await?;
    bob.models().remove(&doc).await?;
    create_confirmed(&alice, std::slice::from_ref(&doc), json!({ "by": "alice" })).await?;

    // Bob's deletion names his creation, which never made the server's "doc": done, and
    // alice's model stays.
    let mut events = bob.events();
    bob.connect_with_jwt(token("bob")).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            Some(DomainEvent::Deleted { model }) if model == doc => break,
            Some(DomainEvent::DeletionRefused { model, error }) if model == doc => {
                anyhow::bail!("bob's deletion was refused: {error:?}")
            }
            Some(_) => {}
            None => anyhow::bail!("events ended"),
        }
    }
    assert!(bob.models().stored_models().await?.iter().all(|m| m.id != doc), "forgotten");
    let carol = domain(&url(&server), &dir.path().join("carol"));
    carol.connect_with_jwt(token("carol")).await?;
    assert_eq!(carol.models().open(&doc).await?.value().await?, json!({ "by": "alice" }));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_never_downloaded_cannot_be_opened_offline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let offline = domain("ws://127.0.0.1:9/test/main", dir.path());
    let error = offline.models().open(&id("anything")).await.unwrap_err();
    assert!(matches!(error, ClientError::NotInitialized), "{error:?}");
    offline.initialize_offline("alice").await?;
    let error = offline.models().open(&id("anything")).await.unwrap_err();
    assert!(matches!(error, ClientError::NotAvailableOffline(_)), "{error:?}");
    assert!(error.to_string().contains("never downloaded"));
    // What it creates offline it can open offline.
    let mine = offline.models().create(&notes(), json!({ "n": 1 })).await?;
    let model = offline.models().open(&mine).await?;
    let n = model.root().get("n").await?.unwrap().as_number()?;
    n.add(2.0).await?;
    assert_eq!(model.value().await?, json!({ "n": 3.0 }));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_editing_one_model_converge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let model = id("busy");
    let mut domains = Vec::new();
    for i in 0..20 {
        let domain = domain(&url(&server), &dir.path().join(format!("client{i}")));
        domain.connect_with_jwt(token(&format!("user{i}"))).await?;
        if i == 0 {
            domain
                .models()
                .create_with_id(&model, &notes(), json!({ "log": [], "text": "" }))
                .await?;
        }
        domains.push(domain);
    }
    let mut tasks = Vec::new();
    for (i, domain) in domains.iter().enumerate() {
        let domain = domain.clone();
        let model = model.clone();
        tasks.push(tokio::spawn(async move {
            let handle = domain.models().open(&model).await?;
            let log = handle.root().get("log").await?.unwrap().as_array()?;
            let text = handle.root().get("text").await?.unwrap().as_string()?;
            let mut last = None;
            for n in 0..10 {
                log.push(json!(format!("{i}-{n}"))).await?;
                last = Some(text.insert(0, &format!("{}", i % 10)).await?);
            }
            handle.acknowledged(last.unwrap()).await?;
            anyhow::Ok(handle)
        }));
    }
    let mut handles = Vec::new();
    for task in tasks {
        handles.push(task.await??);
    }
    eventually("every client has all 400 changes", || async {
        for handle in &handles {
            let value = handle.value().await?;
            if value["log"].as_array().map_or(0, Vec::len) != 200 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    let first = handles[0].value().await?;
    for handle in &handles {
        assert_eq!(handle.value().await?, first);
    }
    assert_eq!(first["text"].as_str().unwrap().len(), 200);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_server_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server");
    let server = start(&server_dir).await?;
    let addr = server.addr();
    let alice = connected(&server, dir.path(), "alice").await?;
    let model = id("doc");
    alice.models().create_with_id(&model, &notes(), json!({ "count": 0 })).await?;
    let doc = alice.models().open(&model).await?;
    let count = doc.root().get("count").await?.unwrap().as_number()?;
    let change = count.add(1.0).await?;
    doc.acknowledged(change).await?;
    server.stop().await?;

    alice.wait_for(ConnectionState::Reconnecting).await?;
    // Offline edits while the server is down.
    let mut last = change;
    for _ in 0..5 {
        last = count.add(1.0).await?;
    }
    doc.stored(last).await?;
    assert!(doc.watermarks().acknowledged < last.seq);

    let server = start_at(&server_dir, addr).await?;
    tokio::time::timeout(Duration::from_secs(30), doc.acknowledged(last)).await??;
    assert_eq!(alice.state(), ConnectionState::Connected);
    let bob = connected(&server, dir.path(), "bob").await?;
    let seen = bob.models().open(&model).await?;
    assert_eq!(seen.value().await?, json!({ "count": 6.0 }));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_models_are_downloaded_into_the_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let ids: Vec<_> = (0..3).map(|i| id(&format!("sub-{i}"))).collect();
    create_confirmed(&alice, &ids, json!({ "n": 1 })).await?;
    bob.models().subscribe_offline(&ids).await?;
    eventually("bob's store has them", || async {
        let stored = bob.models().stored_models().await?;
        Ok(ids.iter().all(|id| stored.iter().any(|m| m.id == *id && m.available)))
    })
    .await?;
    assert_eq!(bob.models().offline_subscriptions().await?.len(), 3);
    bob.disconnect().await?;
    let offline = bob.models().open(&ids[0]).await?;
    assert_eq!(offline.value().await?, json!({ "n": 1.0 }));
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_names_its_url() -> anyhow::Result<()> {
    // A port nothing listens on any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("ws://{addr}/demo/nowhere");
    let domain = concord_client::Domain::builder(url.clone()).build();
    match domain.connect_with_jwt("a token").await {
        Err(ClientError::Connect { url: named, .. }) => assert_eq!(named, url),
        other => panic!("expected a connection failure, got {other:?}"),
    }
    Ok(())
}
