//! Who may do what: authentication, permissions, and what happens to bad input.

mod support;

use std::time::Duration;

use concord_ot::ReplicaId;
use concord_protocol::{
    Auth, ClientMessage, ClientNotice, ClientRequest, ErrorCode, HandshakeResult, KnownModel,
    OfflineUpdate, PROTOCOL_VERSION, PermissionGrants, Permissions, ReconnectToken, RequestId,
    ServerMessage, ServerPush, ServerResponse, UserId,
};
use concord_server::{CollectionConfig, RunningServer, mint_token};
use concord_testkit::wire::{Editor, WireClient};
use support::*;

const READ: Permissions = Permissions { read: true, write: false, remove: false, manage: false };

/// A server where collection `private` lets nobody in by default and `locked` lets only
/// alice create.
async fn guarded_server() -> anyhow::Result<(tempfile::TempDir, RunningServer)> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |config| {
        let private = CollectionConfig { world: Permissions::NONE, ..CollectionConfig::default() };
        config.collections.insert(collection("private"), private);
        let locked = CollectionConfig {
            world_create: false,
            creators: vec![UserId("alice".into())],
            ..CollectionConfig::default()
        };
        config.collections.insert(collection("locked"), locked);
    })
    .await?;
    Ok((dir, server))
}

fn rejection_code(result: HandshakeResult) -> Option<ErrorCode> {
    match result {
        HandshakeResult::Rejected(rejection) => Some(rejection.code),
        HandshakeResult::Accepted(_) => None,
    }
}

support::on_each_store!(handshakes_check_tokens);
async fn handshakes_check_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.auth.allow_anonymous = false).await?;
    let mut client = WireClient::connect(&url(&server)).await?;
    // Nothing but a handshake is served before one succeeds.
    let early = client.request(ClientRequest::Ping).await?;
    assert_eq!(early.unwrap_err().code, ErrorCode::NOT_AUTHENTICATED);
    let forged = mint_token(b"someone else's secret", "alice", None, Duration::from_secs(60))?;
    let code = rejection_code(client.handshake(Auth::Jwt(forged)).await?);
    assert_eq!(code, Some(ErrorCode::AUTHENTICATION_FAILED));
    let code = rejection_code(client.handshake(Auth::Anonymous { display_name: None }).await?);
    assert_eq!(code, Some(ErrorCode::ANONYMOUS_DISABLED));
    let code = rejection_code(client.handshake(Auth::Reconnect(ReconnectToken("x".into()))).await?);
    assert_eq!(code, Some(ErrorCode::AUTHENTICATION_FAILED));
    let session = match client.handshake(jwt("alice")).await? {
        HandshakeResult::Accepted(session) => session,
        other => anyhow::bail!("refused: {other:?}"),
    };
    assert_eq!(session.user.id, UserId("alice".into()));
    let again = client.request(ClientRequest::Ping).await?;
    assert_eq!(again, Ok(ServerResponse::Pong));
    let second = client.handshake(jwt("alice")).await;
    assert!(second.is_err(), "a second handshake is an error reply, not a new session");

    // The reconnect token opens a new session for the same user, with a fresh token.
    let (_, renewed) =
        WireClient::connect_as(&url(&server), Auth::Reconnect(session.reconnect_token.clone()))
            .await?;
    assert_eq!(renewed.user.id, UserId("alice".into()));
    assert_ne!(renewed.session, session.session);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(users_without_permission_cannot_open_write_subscribe_delete_or_manage);
async fn users_without_permission_cannot_open_write_subscribe_delete_or_manage()
-> anyhow::Result<()> {
    let (_dir, server) = guarded_server().await?;
    let mut alice = connect(&server, "alice").await?;
    let mut bob = connect(&server, "bob").await?;
    create_in(&mut alice, "private", "secret", "for alice").await?;

    // Bob may do nothing with it, and is told so as if it did not exist.
    assert_eq!(try_open(&mut bob, "secret").await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    let resync =
        ClientRequest::Resync { model: model("secret"), known_version: 0, in_flight: None };
    assert_eq!(bob.request(resync).await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    let delete = ClientRequest::DeleteModel { model: model("secret"), creation: None };
    assert_eq!(bob.request(delete.clone()).await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    let get = ClientRequest::GetPermissions { model: model("secret") };
    assert_eq!(bob.request(get.clone()).await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    let subscribe = ClientRequest::SubscribeOffline {
        subscribe: vec![KnownModel { model: model("secret"), version: None }],
        unsubscribe: vec![],
        replace: true,
    };
    assert_eq!(bob.request(subscribe.clone()).await?, Ok(ServerResponse::Done));
    let update = bob
        .push(|p| match p {
            ServerPush::OfflineUpdate { update, .. } => Some(update.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(update, OfflineUpdate::Deleted, "no snapshot for bob, and no hint it exists");
    let snapshot = open(&mut alice, "secret").await?;
    let submit = ClientNotice::Submit {
        model: model("secret"),
        replica: ReplicaId(2),
        first_seq: 1,
        seq: 1,
        base_version: 0,
        operation: insert(&snapshot.data, 0, "bob was here"),
    };
    bob.send(&ClientMessage::Notice(submit.clone())).await?;
    let rejected = bob.push(rejected_code).await?;
    assert_eq!(rejected, ErrorCode::MODEL_NOT_OPEN);

    // Alice lets bob read: he can open but not write, and she is told nothing changed.
    let mut grants = PermissionGrants::default();
    grants.users.insert(UserId("alice".into()), Permissions::ALL);
    grants.users.insert(UserId("bob".into()), READ);
    let set = ClientRequest::SetPermissions { model: model("secret"), grants: grants.clone() };
    assert_eq!(alice.request(set).await?, Ok(ServerResponse::Done));
    assert_eq!(
        alice.request(get.clone()).await?,
        Ok(ServerResponse::Permissions { model: model("secret"), grants })
    );
    let seen = open(&mut bob, "secret").await?;
    assert_eq!(body(&seen.data), "for alice");
    bob.send(&ClientMessage::Notice(submit)).await?;
    assert_eq!(bob.push(rejected_code).await?, ErrorCode::PERMISSION_DENIED);
    assert_eq!(bob.request(delete).await?.unwrap_err().code, ErrorCode::PERMISSION_DENIED);

    // Withdrawing read closes the model on bob's connection.
    let mut grants = PermissionGrants::default();
    grants.users.insert(UserId("alice".into()), Permissions::ALL);
    let set = ClientRequest::SetPermissions { model: model("secret"), grants };
    assert_eq!(alice.request(set).await?, Ok(ServerResponse::Done));
    let closed = bob
        .push(|p| match p {
            ServerPush::ModelForceClosed { code, .. } => Some(*code),
            _ => None,
        })
        .await?;
    assert_eq!(closed, ErrorCode::PERMISSION_REVOKED);

    // The model is untouched by all of it.
    let mut carol = connect(&server, "alice").await?;
    let snapshot = open(&mut carol, "secret").await?;
    assert_eq!((snapshot.version, body(&snapshot.data)), (0, "for alice".to_string()));
    server.stop().await?;
    Ok(())
}

support::on_each_store!(permission_changes_reach_the_sessions_they_affect);
async fn permission_changes_reach_the_sessions_they_affect() -> anyhow::Result<()> {
    let (_dir, server) = guarded_server().await?;
    let mut alice = connect(&server, "alice").await?;
    let mut bob = connect(&server, "bob").await?;
    let mut grants = PermissionGrants::default();
    grants.users.insert(UserId("bob".into()), READ);
    let create = ClientRequest::CreateModel {
        model: model("shared"),
        collection: collection("private"),
        data: document(serde_json::json!({ "body": "" })),
        nonce: concord_protocol::CreationNonce([1; 16]),
        permissions: Some(grants.clone()),
    };
    alice.request(create).await?.unwrap();
    open(&mut bob, "shared").await?;
    grants.users.insert(UserId("bob".into()), Permissions { write: true, ..READ });
    grants.users.insert(UserId("alice".into()), Permissions::ALL);
    let set = ClientRequest::SetPermissions { model: model("shared"), grants };
    assert_eq!(alice.request(set).await?, Ok(ServerResponse::Done));
    let changed = bob
        .push(|p| match p {
            ServerPush::PermissionsChanged { permissions, .. } => Some(*permissions),
            _ => None,
        })
        .await?;
    assert_eq!(changed, Permissions { write: true, ..READ });
    server.stop().await?;
    Ok(())
}

support::on_each_store!(collections_decide_who_may_create);
async fn collections_decide_who_may_create() -> anyhow::Result<()> {
    let (_dir, server) = guarded_server().await?;
    let mut bob = connect(&server, "bob").await?;
    let refused = ClientRequest::CreateModel {
        model: model("mine"),
        collection: collection("locked"),
        data: document(serde_json::json!({})),
        nonce: concord_protocol::CreationNonce([2; 16]),
        permissions: None,
    };
    assert_eq!(bob.request(refused).await?.unwrap_err().code, ErrorCode::PERMISSION_DENIED);
    let mut alice = connect(&server, "alice").await?;
    create_in(&mut alice, "locked", "mine", "").await?;
    server.stop().await?;

    // With on-demand collections off, an unknown collection is an error.
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.auto_create_collections = false).await?;
    let mut alice = connect(&server, "alice").await?;
    let request = ClientRequest::CreateModel {
        model: model("x"),
        collection: collection("nowhere"),
        data: document(serde_json::json!({})),
        nonce: concord_protocol::CreationNonce([3; 16]),
        permissions: None,
    };
    let error = alice.request(request).await?.unwrap_err();
    assert_eq!(error.code, ErrorCode::COLLECTION_NOT_FOUND);
    server.stop().await?;
    Ok(())
}

fn rejected_code(push: &ServerPush) -> Option<ErrorCode> {
    match push {
        ServerPush::SubmitRejected { error, .. } => Some(error.code),
        _ => None,
    }
}

support::on_each_store!(invalid_operations_are_rejected_and_leave_the_model_intact);
async fn invalid_operations_are_rejected_and_leave_the_model_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "abc").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let operation = insert(&editor.document, 1, "x");
    commit(&mut alice, &mut editor, operation).await?;

    let bad = [
        // Past the end of the string.
        (2, 1, insert(&editor.document, 99, "y"), ErrorCode::INVALID_OPERATION),
        // A base version from the future (seq 2 was decided: refused).
        (3, 7, insert(&editor.document, 0, "y"), ErrorCode::VERSION_OUT_OF_RANGE),
    ];
    for (seq, base_version, operation, code) in bad {
        let notice = ClientNotice::Submit {
            model: model("doc"),
            replica: ReplicaId(1),
            first_seq: seq,
            seq,
            base_version,
            operation,
        };
        alice.send(&ClientMessage::Notice(notice)).await?;
        assert_eq!(alice.push(rejected_code).await?, code);
    }
    // An old seq of the replica is refused too.
    let stale = ClientNotice::Submit {
        model: model("doc"),
        replica: ReplicaId(1),
        first_seq: 0,
        seq: 0,
        base_version: 1,
        operation: insert(&editor.document, 0, "y"),
    };
    alice.send(&ClientMessage::Notice(stale)).await?;
    assert_eq!(alice.push(rejected_code).await?, ErrorCode::SEQ_OUT_OF_ORDER);
    // A model that is not open on this connection.
    let elsewhere = ClientNotice::Submit {
        model: model("other"),
        replica: ReplicaId(1),
        first_seq: 1,
        seq: 1,
        base_version: 0,
        operation: insert(&editor.document, 0, "y"),
    };
    alice.send(&ClientMessage::Notice(elsewhere)).await?;
    assert_eq!(alice.push(rejected_code).await?, ErrorCode::MODEL_NOT_OPEN);

    let mut bob = connect(&server, "bob").await?;
    let snapshot = open(&mut bob, "doc").await?;
    assert_eq!((snapshot.version, body(&snapshot.data)), (1, "axbc".to_string()));
    server.stop().await?;
    Ok(())
}

support::on_each_store!(malformed_frames_get_a_typed_error_and_the_server_keeps_serving);
async fn malformed_frames_get_a_typed_error_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.limits.max_frame_bytes = 64 * 1024).await?;

    let mut garbage = connect(&server, "alice").await?;
    garbage
        .send_raw(vec![PROTOCOL_VERSION, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await?;
    let closed = garbage.closed().await?;
    assert_eq!(closed.code, Some(1002));
    assert!(matches!(
        garbage.queued().front(),
        Some(ServerMessage::Error { to: None, error }) if error.code == ErrorCode::MALFORMED_FRAME
    ));

    // A newer peer's frame, and an older (version 1) peer's handshake: closed with the
    // code that says so, naming both versions.
    for version in [PROTOCOL_VERSION + 1, 1] {
        let mut other = WireClient::connect(&url(&server)).await?;
        other.send_raw(vec![version, 1, 0, 0]).await?;
        let closed = other.closed().await?;
        assert_eq!(closed.code, Some(concord_protocol::CLOSE_UNSUPPORTED_VERSION));
        let named = format!(
            "unsupported protocol version {version} (this server speaks version {PROTOCOL_VERSION})"
        );
        assert_eq!(closed.reason, named);
    }

    let mut huge = connect(&server, "alice").await?;
    let ping = concord_protocol::encode(&ClientMessage::Request {
        id: RequestId(1),
        request: ClientRequest::Ping,
    })?;
    let mut oversized = ping.clone();
    oversized.resize(100 * 1024, 0);
    huge.send_raw(oversized).await?;
    huge.closed().await?;
    assert!(matches!(
        huge.queued().front(),
        Some(ServerMessage::Error { to: None, error }) if error.code == ErrorCode::FRAME_TOO_LARGE
    ));

    // Opening an unknown model, closing one that is not open: typed errors, connection fine.
    let mut alice = connect(&server, "alice").await?;
    assert_eq!(try_open(&mut alice, "nope").await?.unwrap_err().code, ErrorCode::MODEL_NOT_FOUND);
    let close = ClientRequest::CloseModel { model: model("nope") };
    assert_eq!(alice.request(close).await?.unwrap_err().code, ErrorCode::MODEL_NOT_OPEN);
    create(&mut alice, "doc", "still fine").await?;
    assert_eq!(body(&open(&mut alice, "doc").await?.data), "still fine");
    server.stop().await?;
    Ok(())
}

/// On the embedded store only: what is bounded is the outbox of a socket, the same
/// whatever stores the model (and 20 MiB of edits take half a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_not_buffered() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| {
        c.limits.max_queued_messages = 8;
        // The model grows to 20 MiB: past the default model size limit.
        c.max_model_bytes = 32 << 20;
        // Bob sends nothing either: only the outbox's bound may close him here.
        c.silence_timeout = std::time::Duration::from_secs(3600);
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    let snapshot = open(&mut alice, "doc").await?;
    let mut sleeper = connect(&server, "bob").await?;
    open(&mut sleeper, "doc").await?;
    // Alice writes 20 MiB of text in 512 KiB pieces, more than the sockets' buffers can
    // hold; bob reads none of it.
    let mut editor = Editor::new(model("doc"), ReplicaId(1), &snapshot);
    let piece = "z".repeat(512 * 1024);
    for _ in 0..40 {
        let operation = insert(&editor.document, 0, &piece);
        commit(&mut alice, &mut editor, operation).await?;
    }
    // Bob's connection was closed: reading what the socket buffered ends in a close.
    let closed = sleeper.closed().await?;
    assert!(closed.code.is_none() || closed.code == Some(1008), "{closed:?}");
    assert!(sleeper.queued().len() < 40, "bob got everything: {}", sleeper.queued().len());
    server.stop().await?;
    Ok(())
}

support::on_each_store!(limits_on_open_models_are_enforced);
async fn limits_on_open_models_are_enforced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |c| c.limits.max_open_models = 2).await?;
    let mut alice = connect(&server, "alice").await?;
    for id in ["a", "b", "c"] {
        create(&mut alice, id, "").await?;
    }
    open(&mut alice, "a").await?;
    open(&mut alice, "b").await?;
    assert_eq!(try_open(&mut alice, "c").await?.unwrap_err().code, ErrorCode::OVERLOADED);
    alice.request(ClientRequest::CloseModel { model: model("a") }).await?.unwrap();
    open(&mut alice, "c").await?;
    server.stop().await?;
    Ok(())
}
