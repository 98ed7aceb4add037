//! What a hostile client cannot do to others, over real sockets: use another user's replica
//! (even after a restart), learn which models exist, make the server encode a snapshot per
//! mention of one model, or share unbounded references; and what a model's creator keeps.

mod support;

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, ErrorCode, KnownModel, PermissionGrants,
    Permissions, ReferenceChange, ReferenceKey, ServerMessage, ServerPush, ServerResponse, UserId,
};
use concord_testkit::wire::WireClient;
use support::*;

fn submit(id: &str, replica: u64, seq: u64, base_version: u64, text: &str) -> ClientMessage {
    let snapshot = document(serde_json::json!({ "body": "" }));
    ClientMessage::Notice(ClientNotice::Submit {
        model: model(id),
        replica: ReplicaId(replica),
        first_seq: seq,
        seq,
        base_version,
        operation: insert(&snapshot, 0, text),
    })
}

/// The ack or the refusal of submission `seq`.
async fn answer(client: &mut WireClient, seq: u64) -> anyhow::Result<Result<u64, ErrorCode>> {
    client
        .push(|push| match push {
            ServerPush::Ack { seq: s, version, .. } if *s == seq => Some(Ok(*version)),
            ServerPush::SubmitRejected { seq: s, error, .. } if *s == seq => Some(Err(error.code)),
            _ => None,
        })
        .await
}

support::on_each_store!(a_replica_id_belongs_to_its_first_user_across_restarts);
async fn a_replica_id_belongs_to_its_first_user_across_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    open(&mut alice, "doc").await?;
    alice.send(&submit("doc", 7, 1, 0, "a")).await?;
    assert_eq!(answer(&mut alice, 1).await?, Ok(1));
    server.stop().await?;

    // After a restart, mallory (who can read the model, and so replica 7's element ids)
    // submits under alice's replica: with her next seq, and with one far ahead.
    let server = start(dir.path(), |_| {}).await?;
    let mut mallory = connect(&server, "mallory").await?;
    open(&mut mallory, "doc").await?;
    for seq in [2, 1_000] {
        mallory.send(&submit("doc", 7, seq, 1, "m")).await?;
        assert_eq!(answer(&mut mallory, seq).await?, Err(ErrorCode::PERMISSION_DENIED));
    }
    // Alice's own next submission is committed, not acked as a duplicate of mallory's.
    let mut alice = connect(&server, "alice").await?;
    let snapshot = open(&mut alice, "doc").await?;
    assert_eq!((snapshot.version, body(&snapshot.data)), (1, "a".to_string()));
    alice.send(&submit("doc", 7, 2, 1, "b")).await?;
    assert_eq!(answer(&mut alice, 2).await?, Ok(2));
    let mut reader = connect(&server, "reader").await?;
    assert_eq!(body(&open(&mut reader, "doc").await?.data), "ba");
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_model_one_may_not_read_reveals_nothing);
async fn a_model_one_may_not_read_reveals_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    let private = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    let request = ClientRequest::CreateModel {
        model: model("secret"),
        collection: collection("notes"),
        data: document(serde_json::json!({ "body": "" })),
        nonce: concord_protocol::CreationNonce([1; 16]),
        permissions: Some(private),
    };
    assert!(matches!(alice.request(request).await?, Ok(ServerResponse::ModelCreated { .. })));
    open(&mut alice, "secret").await?;
    let mut bob = connect(&server, "bob").await?;
    // Every request names it the way it names a model that does not exist.
    for (secret, absent) in [
        (
            ClientRequest::OpenModel { model: model("secret"), auto_create: false },
            ClientRequest::OpenModel { model: model("absent"), auto_create: false },
        ),
        (
            ClientRequest::DeleteModel { model: model("secret"), creation: None },
            ClientRequest::DeleteModel { model: model("absent"), creation: None },
        ),
        (
            ClientRequest::GetPermissions { model: model("secret") },
            ClientRequest::GetPermissions { model: model("absent") },
        ),
        (
            ClientRequest::ResyncComplete { model: model("secret"), open: true },
            ClientRequest::ResyncComplete { model: model("absent"), open: true },
        ),
    ] {
        let secret = bob.request(secret).await?.unwrap_err();
        let absent = bob.request(absent).await?.unwrap_err();
        assert_eq!(secret.code, ErrorCode::MODEL_NOT_FOUND);
        assert_eq!(
            (secret.code, secret.message.replace("secret", "absent")),
            (absent.code, absent.message)
        );
    }
    server.stop().await?;
    Ok(())
}

support::on_each_store!(one_frame_naming_a_model_thousands_of_times_gets_one_catch_up);
async fn one_frame_naming_a_model_thousands_of_times_gets_one_catch_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "big", &"x".repeat(100_000)).await?;
    let mut mallory = connect(&server, "mallory").await?;
    let subscribe = ClientRequest::SubscribeOffline {
        subscribe: vec![KnownModel { model: model("big"), version: None }; 5_000],
        unsubscribe: vec![],
        replace: false,
    };
    assert_eq!(mallory.request(subscribe).await?, Ok(ServerResponse::Done));
    // The model's task answers in order: once it answered a later request, every catch-up
    // it sent for the subscription has arrived.
    let later = ClientRequest::GetPermissions { model: model("big") };
    let _ = mallory.request(later).await?;
    let updates = mallory
        .queued()
        .iter()
        .filter(|m| matches!(m, ServerMessage::Push(ServerPush::OfflineUpdate { .. })))
        .count();
    assert_eq!(updates, 1);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(shared_references_are_bounded_per_session);
async fn shared_references_are_bounded_per_session() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |config| {
        config.limits.max_shared_references = 3;
        config.limits.max_reference_bytes = 64;
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "").await?;
    open(&mut alice, "doc").await?;
    let share = |key: String| {
        ClientMessage::Notice(ClientNotice::Reference {
            model: model("doc"),
            change: ReferenceChange::Share {
                reference: ReferenceKey { element: None, key },
                value: None,
            },
        })
    };
    for n in 0..3 {
        alice.send(&share(format!("k{n}"))).await?;
    }
    alice.send(&share("k3".into())).await?;
    alice.send(&share("x".repeat(1 << 20))).await?;
    let mut codes = Vec::new();
    while codes.len() < 2 {
        if let ServerMessage::Push(ServerPush::ReferenceRefused { error, .. }) =
            alice.next().await?
        {
            codes.push(error.code);
        }
    }
    assert_eq!(codes, [ErrorCode::OVERLOADED, ErrorCode::INVALID_REFERENCE]);
    server.stop().await?;
    Ok(())
}

support::on_each_store!(a_creator_cannot_be_locked_out_of_their_model);
async fn a_creator_cannot_be_locked_out_of_their_model() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |_| {}).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "mine").await?;
    let mut grants = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    grants.users.insert(UserId("bob".into()), Permissions::ALL);
    let set = ClientRequest::SetPermissions { model: model("doc"), grants };
    assert_eq!(alice.request(set).await?, Ok(ServerResponse::Done));
    // Bob, granted manage, takes everything from alice.
    let mut bob = connect(&server, "bob").await?;
    let mut lockout = PermissionGrants { override_collection: true, ..PermissionGrants::default() };
    lockout.users.insert(UserId("alice".into()), Permissions::NONE);
    lockout.users.insert(UserId("bob".into()), Permissions::ALL);
    let set = ClientRequest::SetPermissions { model: model("doc"), grants: lockout };
    assert_eq!(bob.request(set).await?, Ok(ServerResponse::Done));
    let snapshot = open(&mut alice, "doc").await?;
    assert_eq!(body(&snapshot.data), "mine");
    let get = ClientRequest::GetPermissions { model: model("doc") };
    assert!(matches!(alice.request(get).await?, Ok(ServerResponse::Permissions { .. })));
    server.stop().await?;
    Ok(())
}
