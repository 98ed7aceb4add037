//! A model's permissions managed from the client, over a real server: read and set with
//! `manage`, refused without it, enforced at once on the sessions they affect, and never
//! queued offline.

mod support;

use std::time::Duration;

use concord_client::{
    ClientError, ErrorCode, ModelEvent, PermissionGrants, Permissions, RealTimeModel, UserId,
};
use serde_json::json;
use support::*;

const READ_WRITE: Permissions =
    Permissions { read: true, write: true, remove: false, manage: false };
const READ_ONLY: Permissions =
    Permissions { read: true, write: false, remove: false, manage: false };

fn grants(users: &[(&str, Permissions)]) -> PermissionGrants {
    PermissionGrants {
        override_collection: true,
        world: Permissions::NONE,
        users: users.iter().map(|(u, p)| (UserId((*u).into()), *p)).collect(),
    }
}

/// The next event of `model` that `pick` accepts.
async fn next_event<T>(
    events: &mut concord_client::Events<ModelEvent>,
    mut pick: impl FnMut(ModelEvent) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await?;
        match event {
            Some(event) => {
                if let Some(found) = pick(event) {
                    return Ok(found);
                }
            }
            None => anyhow::bail!("the model's events ended"),
        }
    }
}

async fn text(model: &RealTimeModel) -> anyhow::Result<concord_client::RealTimeString> {
    Ok(model.root().get("text").await?.unwrap().as_string()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_set_from_a_client_are_enforced_at_once_and_need_manage() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let bob = connected(&server, dir.path(), "bob").await?;
    let carol = connected(&server, dir.path(), "carol").await?;

    let doc = id("doc");
    let version = alice
        .models()
        .create_with_permissions(
            &doc,
            &notes(),
            json!({ "text": "" }),
            &grants(&[("bob", READ_WRITE)]),
        )
        .await?;
    assert_eq!(version, 0);

    // Bob may read and write; Carol, outside the grants, may not even open it.
    let bobs = bob.models().open(&doc).await?;
    let change = text(&bobs).await?.insert(0, "bob was here").await?;
    bobs.acknowledged(change).await?;
    match carol.models().open(&doc).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND),
        other => anyhow::bail!("carol opened a model she may not read: {other:?}"),
    }

    // Without `manage`, neither reading nor changing the grants.
    for refused in [
        bob.models().permissions(&doc).await.map(|_| ()),
        bob.models().set_permissions(&doc, &grants(&[("bob", Permissions::ALL)])).await,
    ] {
        match refused {
            Err(ClientError::Server(error)) => {
                assert_eq!(error.code, ErrorCode::PERMISSION_DENIED)
            }
            other => anyhow::bail!("bob managed permissions without `manage`: {other:?}"),
        }
    }

    // The creator reads them (and holds every permission herself).
    let read = alice.models().permissions(&doc).await?;
    assert_eq!(read.users.get(&UserId("bob".into())), Some(&READ_WRITE));
    assert_eq!(read.users.get(&UserId("alice".into())), Some(&Permissions::ALL));
    assert!(read.override_collection);

    // Bob becomes read-only: he hears it, and his next change is refused.
    let mut events = bobs.events();
    let mut read_only = read.clone();
    read_only.users.insert(UserId("bob".into()), READ_ONLY);
    alice.models().set_permissions(&doc, &read_only).await?;
    let told = next_event(&mut events, |e| match e {
        ModelEvent::PermissionsChanged { permissions } => Some(permissions),
        _ => None,
    })
    .await?;
    assert_eq!(told, READ_ONLY);
    text(&bobs).await?.insert(0, "refused ").await?;
    let error = next_event(&mut events, |e| match e {
        ModelEvent::Rejected { error, .. } => Some(error),
        _ => None,
    })
    .await?;
    assert_eq!(error.code, ErrorCode::PERMISSION_DENIED);
    assert_eq!(text(&bobs).await?.value().await?, "bob was here");

    // Carol is granted read: she opens it now.
    let mut with_carol = read_only.clone();
    with_carol.users.insert(UserId("carol".into()), READ_ONLY);
    alice.models().set_permissions(&doc, &with_carol).await?;
    let carols = carol.models().open(&doc).await?;
    assert_eq!(text(&carols).await?.value().await?, "bob was here");

    // Bob loses read: the server closes the model on his session, saying why.
    let mut without_bob = with_carol.clone();
    without_bob.users.insert(UserId("bob".into()), Permissions::NONE);
    alice.models().set_permissions(&doc, &without_bob).await?;
    let gone = next_event(&mut events, |e| match e {
        ModelEvent::Gone { error } => Some(error),
        _ => None,
    })
    .await?;
    assert_eq!(gone.code, ErrorCode::PERMISSION_REVOKED, "{gone:?}");
    assert!(gone.message.contains("read"), "{gone:?}");
    match bob.models().permissions(&doc).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND),
        other => anyhow::bail!("bob still sees the model: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_change_offline_fails_at_once_and_is_not_queued() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start(&dir.path().join("server")).await?;
    let alice = connected(&server, dir.path(), "alice").await?;
    let doc = id("doc");
    alice
        .models()
        .create_with_permissions(&doc, &notes(), json!({}), &grants(&[("bob", READ_WRITE)]))
        .await?;
    alice.disconnect().await?;

    let offline = grants(&[("bob", Permissions::ALL)]);
    assert!(matches!(
        alice.models().set_permissions(&doc, &offline).await,
        Err(ClientError::Offline)
    ));
    assert!(matches!(alice.models().permissions(&doc).await, Err(ClientError::Offline)));
    assert!(matches!(
        alice.models().create_with_permissions(&id("other"), &notes(), json!({}), &offline).await,
        Err(ClientError::Offline)
    ));

    // Back online, nothing of it reached the server.
    alice.connect_with_jwt(token("alice")).await?;
    let read = alice.models().permissions(&doc).await?;
    assert_eq!(read.users.get(&UserId("bob".into())), Some(&READ_WRITE));
    match alice.models().permissions(&id("other")).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND),
        other => anyhow::bail!("the offline creation reached the server: {other:?}"),
    }

    // A domain never connected fails the same way.
    let fresh = domain(&url(&server), &dir.path().join("fresh"));
    fresh.initialize_offline("fresh").await?;
    assert!(matches!(fresh.models().permissions(&doc).await, Err(ClientError::Offline)));
    Ok(())
}
