//! Editing over real loopback sockets: convergence, creation and deletion, subscriptions,
//! unloading idle models, and restarts.

mod support;

use std::time::Duration;

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientMessage, ClientRequest, ClientResponse, CreationNonce, ErrorCode, InFlight, KnownModel,
    OfflineUpdate, ServerMessage, ServerPush, ServerRequest, ServerResponse,
};
use concord_testkit::SimRng;
use concord_testkit::wire::{Editor, WireClient};
use support::*;

/// Runs `rounds` closed-loop inserts on each editor at once (one outstanding submission
/// each), then waits until every editor has every operation.
async fn edit_concurrently(
    clients: &mut [(WireClient, Editor)],
    rounds: usize,
    seed: u64,
) -> anyhow::Result<u64> {
    let mut rng = SimRng::new(seed);
    let total = (clients.len() * rounds) as u64;
    let start = clients[0].1.version;
    let mut sent = vec![0; clients.len()];
    loop {
        for (i, (client, editor)) in clients.iter_mut().enumerate() {
            if !editor.in_flight() && sent[i] < rounds {
                let len = body(&editor.document).chars().count();
                let index = rng.below(len + 1);
                let notice = editor.submit(insert(&editor.document, index, &format!("{i}")))?;
                client.send(&ClientMessage::Notice(notice)).await?;
                sent[i] += 1;
            }
        }
        let done = clients.iter().all(|(_, e)| e.version == start + total && !e.in_flight());
        if done {
            return Ok(start + total);
        }
        // A client with a submission in flight has its ack coming; once nobody has one,
        // everything is sent, and each client that is behind has operations coming.
        let waiting = clients.iter().any(|(_, e)| e.in_flight());
        for (client, editor) in clients.iter_mut() {
            if editor.in_flight() || (!waiting && editor.version < start + total) {
                let push = client.push(|p| Some(p.clone())).await?;
                editor.receive(&push)?;
            }
        }
    }
}

support::on_each_store!(concurrent_editors_converge_with_the_server);
async fn concurrent_editors_converge_with_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut clients = vec![(alice, Editor::new(model("doc"), ReplicaId(1), &snapshot))];
    for (i, user) in ["bob", "carol"].into_iter().enumerate() {
        let mut client = connect(&server, user).await?;
        let snapshot = open(&mut client, "doc").await?;
        clients.push((client, Editor::new(model("doc"), ReplicaId(i as u64 + 2), &snapshot)));
    }
    let version = edit_concurrently(&mut clients, 40, 1).await?;
    assert_eq!(version, 120);
    let bodies: Vec<String> = clients.iter().map(|(_, e)| body(&e.document)).collect();
    assert!(bodies.iter().all(|b| *b == bodies[0]), "diverged: {bodies:?}");
    assert_eq!(bodies[0].len(), 120);
    for digit in ['0', '1', '2'] {
        assert_eq!(bodies[0].chars().filter(|c| *c == digit).count(), 40);
    }
    // A newcomer sees the same.
    let mut dave = connect(&server, "dave").await?;
    let snapshot = open(&mut dave, "doc").await?;
    assert_eq!((snapshot.version, body(&snapshot.data)), (120, bodies[0].clone()));
    server.stop().await?;
    Ok(())
}

support::on_each_store!(creation_is_idempotent_by_nonce_and_ids_are_never_reused);
async fn creation_is_idempotent_by_nonce_and_ids_are_never_reused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "hello").await?;
    // The same creation again (its answer was lost) succeeds; another one is refused.
    create(&mut alice, "doc", "hello").await?;
    let other = ClientRequest::CreateModel {
        model: model("doc"),
        collection: collection("notes"),
        data: document(serde_json::json!({ "body": "other" })),
        nonce: CreationNonce([9; 16]),
        permissions: None,
    };
    let refused = alice.request(other.clone()).await?.unwrap_err();
    assert_eq!(refused.code, ErrorCode::MODEL_ALREADY_EXISTS);

    let mut bob = connect(&server, "bob").await?;
    open(&mut bob, "doc").await?;
    bob.request(ClientRequest::SubscribeOffline {
        subscribe: vec![KnownModel { model: model("doc"), version: Some(0) }],
        unsubscribe: vec![],
        replace: true,
    })
    .await?
    .unwrap();
    let done =
        alice.request(ClientRequest::DeleteModel { model: model("doc"), creation: None }).await?;
    assert_eq!(done, Ok(ServerResponse::Done));
    let closed = bob
        .push(|p| match p {
            ServerPush::ModelForceClosed { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(closed, ErrorCode::MODEL_DELETED);
    let gone = bob
        .push(|p| match p {
            ServerPush::OfflineUpdate { update, .. } => Some(update.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(gone, OfflineUpdate::Deleted);
    // Deleted ids stay taken; deleting again says there is nothing.
    assert_eq!(alice.request(other).await?.unwrap_err().code, ErrorCode::MODEL_ALREADY_EXISTS);
    let again =
        alice.request(ClientRequest::DeleteModel { model: model("doc"), creation: None }).await?;
    assert_eq!(again.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    assert_eq!(try_open(&mut alice, "never").await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(opening_a_missing_model_can_ask_the_client_for_its_data);
async fn opening_a_missing_model_can_ask_the_client_for_its_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    let open_id = alice
        .send_request(ClientRequest::OpenModel { model: model("auto"), auto_create: true })
        .await?;
    let asked = match alice.next().await? {
        ServerMessage::Request { id, request: ServerRequest::AutoCreate { model: m } } => {
            assert_eq!(m, model("auto"));
            id
        }
        other => anyhow::bail!("expected AutoCreate, got {other:?}"),
    };
    let response = ClientResponse::AutoCreate {
        collection: collection("notes"),
        data: document(serde_json::json!({ "body": "made on open" })),
        permissions: None,
    };
    alice.send(&ClientMessage::Response { to: asked, response }).await?;
    match alice.response(open_id).await? {
        Ok(ServerResponse::ModelOpened(opened)) => {
            assert_eq!(body(&opened.snapshot.data), "made on open");
            assert!(opened.permissions.manage, "the creator gets every permission");
        }
        other => anyhow::bail!("expected ModelOpened, got {other:?}"),
    }
    // A client that declines gets model_not_found for its open.
    let open_id = alice
        .send_request(ClientRequest::OpenModel { model: model("declined"), auto_create: true })
        .await?;
    let asked = match alice.next().await? {
        ServerMessage::Request { id, .. } => id,
        other => anyhow::bail!("expected AutoCreate, got {other:?}"),
    };
    let error = concord_protocol::ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no data here");
    alice.send(&ClientMessage::Error { to: Some(asked), error }).await?;
    assert_eq!(alice.response(open_id).await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(subscribers_catch_up_and_hear_live_changes);
async fn subscribers_catch_up_and_hear_live_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    for text in ["a", "b", "c"] {
        let operation = insert(&editor.document, 0, text);
        commit(&mut alice, &mut editor, operation).await?;
    }
    // Bob knew version 1: he gets operations 2 and 3; Carol knew nothing: a snapshot.
    let mut bob = connect(&server, "bob").await?;
    let mut carol = connect(&server, "carol").await?;
    for (client, known) in [(&mut bob, Some(1)), (&mut carol, None)] {
        let request = ClientRequest::SubscribeOffline {
            subscribe: vec![KnownModel { model: model("doc"), version: known }],
            unsubscribe: vec![],
            replace: true,
        };
        assert_eq!(client.request(request).await?, Ok(ServerResponse::Done));
    }
    let update = |p: &ServerPush| match p {
        ServerPush::OfflineUpdate { update, .. } => Some(update.clone()),
        _ => None,
    };
    match bob.push(update).await? {
        OfflineUpdate::Operations { operations, .. } => {
            assert_eq!(operations.iter().map(|o| o.version).collect::<Vec<_>>(), [2, 3]);
        }
        other => anyhow::bail!("bob got {other:?}"),
    }
    match carol.push(update).await? {
        OfflineUpdate::Snapshot { snapshot, .. } => {
            assert_eq!((snapshot.version, body(&snapshot.data)), (3, "cba".to_string()));
        }
        other => anyhow::bail!("carol got {other:?}"),
    }
    // Live: the next change reaches both without opening the model.
    let notice = editor.submit(insert(&editor.document, 3, "d"))?;
    alice.send(&ClientMessage::Notice(notice)).await?;
    for client in [&mut bob, &mut carol] {
        match client.push(update).await? {
            OfflineUpdate::Operations { operations, .. } => assert_eq!(operations[0].version, 4),
            other => anyhow::bail!("live update was {other:?}"),
        }
    }
    server.stop().await?;
    Ok(())
}

support::on_each_store!(an_idle_model_unloads_and_comes_back_intact);
async fn an_idle_model_unloads_and_comes_back_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.idle_unload = Duration::from_millis(20)).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    for round in 0..3 {
        let snapshot = open(&mut alice, "doc").await?;
        assert_eq!(snapshot.version, round);
        let mut editor = Editor::new(model("doc"), ReplicaId(round + 1), &snapshot);
        let operation = insert(&editor.document, 0, "x");
        commit(&mut alice, &mut editor, operation).await?;
        alice.request(ClientRequest::CloseModel { model: model("doc") }).await?.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let snapshot = open(&mut alice, "doc").await?;
    assert_eq!((snapshot.version, body(&snapshot.data)), (3, "xxx".to_string()));
    server.stop().await?;
    Ok(())
}

support::on_each_store!(resync_after_a_restart_pages_the_log_from_the_store);
async fn resync_after_a_restart_pages_the_log_from_the_store() -> anyhow::Result<()> {
    let small_memory = |c: &mut concord_server::ServerConfig| {
        c.history_in_memory = 8;
        c.snapshot_every = 100;
    };
    let temp = tempfile::tempdir()?;
    let server = start(temp.path(), small_memory).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let total = 600;
    for _ in 0..total {
        let operation = insert(&editor.document, 0, "x");
        commit(&mut alice, &mut editor, operation).await?;
    }
    // The last submission is resent after the restart, as if its ack had been lost.
    let last_seq = total as u64;
    server.stop().await?;

    let server = start(temp.path(), small_memory).await?;
    // Alice again, on a new connection (only she may name her replica's submission).
    let mut again = connect(&server, "alice").await?;
    let request = ClientRequest::Resync {
        model: model("doc"),
        known_version: 0,
        in_flight: Some(InFlight { replica: ReplicaId(1), seq: last_seq }),
    };
    match again.request(request).await? {
        Ok(ServerResponse::ResyncStarted { current_version, in_flight_committed, .. }) => {
            assert_eq!(current_version, total as u64);
            assert_eq!(in_flight_committed.map(|c| c.version), Some(total as u64));
        }
        other => anyhow::bail!("resync answered {other:?}"),
    }
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let (operations, last) = again
            .push(|p| match p {
                ServerPush::ResyncPage { operations, last, .. } => {
                    Some((operations.clone(), *last))
                }
                _ => None,
            })
            .await?;
        pages += 1;
        versions.extend(operations.iter().map(|o| o.version));
        if last {
            break;
        }
    }
    assert_eq!(versions, (1..=total as u64).collect::<Vec<_>>());
    assert!(pages >= 3, "600 operations come in pages of at most 256, got {pages} pages");
    // The resent submission is answered with its original ack, not applied again.
    let notice = concord_protocol::ClientNotice::Submit {
        model: model("doc"),
        replica: ReplicaId(1),
        first_seq: last_seq,
        seq: last_seq,
        base_version: total as u64 - 1,
        operation: insert(&editor.document, 0, "x"),
    };
    again.send(&ClientMessage::Notice(notice)).await?;
    let ack = again
        .push(|p| match p {
            ServerPush::Ack { seq, version, .. } => Some((*seq, *version)),
            _ => None,
        })
        .await?;
    assert_eq!(ack, (last_seq, total as u64));
    let mut carol = connect(&server, "carol").await?;
    let snapshot = open(&mut carol, "doc").await?;
    assert_eq!(snapshot.version, total as u64);
    assert_eq!(body(&snapshot.data), "x".repeat(total));
    server.stop().await?;
    Ok(())
}

/// On the embedded store only: the web root is served without the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_beside_the_websocket_endpoint() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = tempfile::tempdir()?;
    std::fs::write(web.path().join("index.html"), "<h1>concord</h1>")?;
    std::fs::write(web.path().join("app.js"), "console.log('hi')")?;
    let root = web.path().to_path_buf();
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), move |c| c.web_root = Some(root)).await?;
    let addr = server.addr();
    let get = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    assert!(get("/").await?.contains("<h1>concord</h1>"));
    assert!(get("/app.js").await?.contains("console.log"));
    assert!(get("/../Cargo.toml").await?.starts_with("HTTP/1.1 4"));
    assert!(get("/health").await?.ends_with("ok"));
    // The WebSocket endpoint is unchanged.
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_late_submission_on_an_old_connection_is_acked_on_the_new_one);
/// A client's submission can still arrive on its old connection after it resynced on a new
/// one (each socket is read by its own task): it must be acknowledged on the new connection,
/// never announced there as someone else's operation.
async fn a_late_submission_on_an_old_connection_is_acked_on_the_new_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut old = connect(&server, "alice").await?;
    create(&mut old, "late", "hello").await?;
    let snapshot = open(&mut old, "late").await?;
    let mut bob = connect(&server, "bob").await?;
    open(&mut bob, "late").await?;
    // Alice reconnects and resyncs, naming the submission she has in flight (not committed
    // yet)...
    let replica = ReplicaId(42);
    let mut new = connect(&server, "alice").await?;
    let resync = ClientRequest::Resync {
        model: model("late"),
        known_version: 0,
        in_flight: Some(InFlight { replica, seq: 1 }),
    };
    match new.request(resync).await? {
        Ok(ServerResponse::ResyncStarted { in_flight_committed: None, .. }) => {}
        other => anyhow::bail!("resync: {other:?}"),
    }
    // ... and only then does the old connection's copy of that submission arrive.
    let operation = insert(&snapshot.data, 5, " world");
    old.submit(&model("late"), replica, 1, 0, operation).await?;
    let on_new = new
        .push(|push| match push {
            ServerPush::Ack { seq, version, .. } => Some(Ok((*seq, *version))),
            ServerPush::RemoteOperation { operation, .. } => Some(Err(operation.clone())),
            _ => None,
        })
        .await?;
    assert_eq!(on_new, Ok((1, 1)), "the new connection must hear an ack, not its own operation");
    let on_bob = bob
        .push(|push| match push {
            ServerPush::RemoteOperation { operation, .. } => Some(operation.version),
            _ => None,
        })
        .await?;
    assert_eq!(on_bob, 1);
    server.stop().await?;
    Ok(())
}

/// A reference notice on `doc`'s body.
fn cursor(body: concord_ot::ElementId, index: usize, version: u64) -> ClientMessage {
    ClientMessage::Notice(concord_protocol::ClientNotice::Reference {
        model: model("doc"),
        change: concord_protocol::ReferenceChange::Set {
            reference: concord_protocol::ReferenceKey { element: Some(body), key: "c".into() },
            value: concord_ot::ReferenceValue::Index(vec![index]),
            version,
        },
    })
}

support::on_each_store!(references_are_checked_moved_with_the_text_and_listed_to_late_joiners);
async fn references_are_checked_moved_with_the_text_and_listed_to_late_joiners()
-> anyhow::Result<()> {
    use concord_ot::{PathSegment, ReferenceValue};
    use concord_protocol::ReferenceChange;
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "hello").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let mut bob = connect(&server, "bob").await?;
    open(&mut bob, "doc").await?;
    let body = snapshot.data.element_at(&[PathSegment::Key("body".into())]).unwrap();

    // Past the end, or at a version the model has not reached: refused, typed.
    for invalid in [cursor(body, 6, 0), cursor(body, 0, 5)] {
        bob.send(&invalid).await?;
        match bob.next().await? {
            ServerMessage::Push(ServerPush::ReferenceRefused { reference, error, .. }) => {
                assert_eq!(error.code, ErrorCode::INVALID_REFERENCE, "{error:?}");
                assert_eq!(reference.key, "c", "the refusal names the reference");
            }
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
    }
    // A valid one reaches alice, and is the first reference she hears of.
    bob.send(&cursor(body, 5, 0)).await?;
    let relayed = alice.push(|p| match p {
        ServerPush::RemoteReference { change, .. } => Some(change.clone()),
        _ => None,
    });
    match relayed.await? {
        ReferenceChange::Set { value, version: 0, .. } => {
            assert_eq!(value, ReferenceValue::Index(vec![5]));
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    // Alice types in front of bob's cursor: a late joiner finds it moved along.
    let typed = insert(&editor.document, 0, ">> ");
    commit(&mut alice, &mut editor, typed).await?;
    let mut carol = connect(&server, "carol").await?;
    let request = ClientRequest::OpenModel { model: model("doc"), auto_create: false };
    let Ok(ServerResponse::ModelOpened(opened)) = carol.request(request).await? else {
        anyhow::bail!("carol could not open");
    };
    let values: Vec<_> = opened.references.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, vec![Some(ReferenceValue::Index(vec![8]))]);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_reference_older_than_memory_is_moved_through_the_stored_operations);
async fn a_reference_older_than_memory_is_moved_through_the_stored_operations() -> anyhow::Result<()>
{
    use concord_ot::{PathSegment, ReferenceValue};
    use concord_protocol::ReferenceChange;
    let dir = tempfile::tempdir()?;
    // Two operations in memory: anything older is read back from the store.
    let server = start(dir.path(), |config| config.history_in_memory = 2).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "world").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let mut bob = connect(&server, "bob").await?;
    open(&mut bob, "doc").await?;
    let body = snapshot.data.element_at(&[PathSegment::Key("body".into())]).unwrap();
    for _ in 0..6 {
        let typed = insert(&editor.document, 0, "-");
        commit(&mut alice, &mut editor, typed).await?;
    }
    // Bob's cursor on the "r" of "world" as of version 0 arrives late: moved through the six
    // inserts read from the store, and relayed at version 6.
    bob.send(&cursor(body, 2, 0)).await?;
    let relayed = alice.push(|p| match p {
        ServerPush::RemoteReference { change, .. } => Some(change.clone()),
        _ => None,
    });
    match relayed.await? {
        ReferenceChange::Set { value, version: 6, .. } => {
            assert_eq!(value, ReferenceValue::Index(vec![8]));
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    server.stop().await?;
    Ok(())
}

support::on_each_store!(old_references_past_the_sessions_read_budget_are_refused_by_name);
async fn old_references_past_the_sessions_read_budget_are_refused_by_name() -> anyhow::Result<()> {
    use concord_ot::PathSegment;
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |config| {
        config.history_in_memory = 2;
        config.limits.max_reference_reads = 3;
        config.limits.reference_reads_per_second = 1;
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "world").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let mut bob = connect(&server, "bob").await?;
    open(&mut bob, "doc").await?;
    let body = snapshot.data.element_at(&[PathSegment::Key("body".into())]).unwrap();
    for _ in 0..6 {
        let typed = insert(&editor.document, 0, "-");
        commit(&mut alice, &mut editor, typed).await?;
    }
    // Moving a cursor from version 0 needs four or five stored operations read: more than
    // bob's session may make the server read.
    bob.send(&cursor(body, 2, 0)).await?;
    let refused = bob.push(|p| match p {
        ServerPush::ReferenceRefused { reference, error, .. } => {
            Some((reference.key.clone(), error.code, error.message.clone()))
        }
        _ => None,
    });
    let (key, code, message) = refused.await?;
    assert_eq!((key.as_str(), code), ("c", ErrorCode::OVERLOADED));
    assert!(message.contains("at most 3"), "{message}");
    // At the current version it is taken, and alice hears only that.
    bob.send(&cursor(body, 2, 6)).await?;
    let relayed = alice.push(|p| match p {
        ServerPush::RemoteReference { change, .. } => Some(change.clone()),
        _ => None,
    });
    assert!(matches!(relayed.await?, concord_protocol::ReferenceChange::Set { version: 6, .. }));
    server.stop().await?;
    Ok(())
}
