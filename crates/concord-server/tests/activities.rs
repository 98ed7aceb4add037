//! Activities over the wire: permissions configured per activity type, participants
//! removed when their connection ends, a manager removing a session.

mod support;

use std::collections::BTreeMap;

use concord_protocol::{
    ActivityChange, ActivityId, ActivityRequest, ClientRequest, ErrorCode, ServerPush,
    ServerResponse, SessionId, UserId,
};
use concord_server::{ActivityPermissions, ActivityPolicy};
use concord_testkit::wire::WireClient;
use support::*;

fn form() -> ActivityId {
    ActivityId { kind: "editing".into(), id: "form 1".into() }
}

fn join(activity: ActivityId) -> ClientRequest {
    ClientRequest::Activity(ActivityRequest::Join { activity, state: BTreeMap::new() })
}

async fn change(client: &mut WireClient) -> anyhow::Result<ActivityChange> {
    client
        .push(|p| match p {
            ServerPush::Activity { change, .. } => Some(change.clone()),
            _ => None,
        })
        .await
}

support::on_each_store!(activity_types_have_their_permissions_and_managers_remove_sessions);
async fn activity_types_have_their_permissions_and_managers_remove_sessions() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = start(dir.path(), |config| {
        let mut editing =
            ActivityPolicy { world: ActivityPermissions::PARTICIPATE, users: BTreeMap::new() };
        editing.users.insert(UserId("alice".into()), ActivityPermissions::ALL);
        editing.users.insert(UserId("mallory".into()), ActivityPermissions::default());
        config.activities.types.insert("editing".into(), editing);
    })
    .await?;
    let mut alice = connect(&server, "alice").await?;
    let mut bob = connect(&server, "bob").await?;
    let mut mallory = connect(&server, "mallory").await?;

    match mallory.request(join(form())).await? {
        Err(error) => assert_eq!(error.code, ErrorCode::PERMISSION_DENIED),
        Ok(answer) => anyhow::bail!("mallory joined: {answer:?}"),
    }
    alice.request(join(form())).await??;
    let Ok(ServerResponse::ActivityJoined { participants, .. }) = bob.request(join(form())).await?
    else {
        anyhow::bail!("bob did not join");
    };
    assert_eq!(participants.len(), 2);
    let ActivityChange::Joined(bobs) = change(&mut alice).await? else { anyhow::bail!("no join") };

    // Bob may not remove Alice; Alice may remove Bob, who hears it.
    let alices = participants.iter().find(|p| p.user.0 == "alice").unwrap().session.clone();
    let remove = |session: SessionId| {
        ClientRequest::Activity(ActivityRequest::Remove { activity: form(), session })
    };
    assert_eq!(bob.request(remove(alices)).await?.unwrap_err().code, ErrorCode::PERMISSION_DENIED);
    alice.request(remove(bobs.session.clone())).await??;
    let left = ActivityChange::Left { session: bobs.session, user: UserId("bob".into()) };
    assert_eq!(change(&mut bob).await?, left);
    assert_eq!(change(&mut alice).await?, left);

    // A participant whose connection ends leaves.
    let mut carol = connect(&server, "carol").await?;
    carol.request(join(form())).await??;
    let ActivityChange::Joined(carols) = change(&mut alice).await? else {
        anyhow::bail!("no join")
    };
    carol.close().await?;
    let left = ActivityChange::Left { session: carols.session, user: UserId("carol".into()) };
    assert_eq!(change(&mut alice).await?, left);
    Ok(())
}
